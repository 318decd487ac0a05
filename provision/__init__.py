"""provision: rent and drive the machines trainyard trains on."""
