"""The `lambda` provider: Lambda Cloud's REST API (`client`), its objects (`models`), the HTTP
rules under it (`transport`: timeouts, retries, errors), its billing rule (`billing`), and the
`Provider` implementation (`provider`). The simulator in `provision.simulator` speaks the same API.
"""

from provision.lambda_cloud.client import DEFAULT_BASE_URL, LambdaClient
from provision.lambda_cloud.provider import LambdaProvider
from provision.lambda_cloud.transport import RetryPolicy

__all__ = ["DEFAULT_BASE_URL", "LambdaClient", "LambdaProvider", "RetryPolicy"]
