"""Deciding before spending: model shapes, throughput records and plans (`trainyard plan`)."""
