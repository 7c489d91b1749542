"""AWS plumbing below the storage layer: ``settings`` (region, endpoint, credentials of
every client), ``sigv4`` (request signing), ``httpconn`` (the lean HTTP/1.1 connection
pool), ``client`` (an aiobotocore client's lifecycle).
"""

__all__: list[str] = []
