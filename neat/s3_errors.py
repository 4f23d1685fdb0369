"""Saying why an S3 request failed: refused credentials are not an unreachable endpoint.

Missing or wrong keys reach users in many forms (boto's NoCredentialsError, InvalidAccessKeyId,
SignatureDoesNotMatch, a bare 403 Forbidden on HeadObject, DVC's "unexpected error - Forbidden");
each of them is named here as a credentials problem, with the variables to check, and no message
built here ever carries a secret's value.
"""

from __future__ import annotations

import os
import re

CREDENTIALS_HINT = ("check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment "
                    "of this process")
# error codes an S3 service (AWS, MinIO) answers when it refuses who is asking
CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden",
                    "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AuthorizationHeaderMalformed",
                    "InvalidClientTokenId", "UnrecognizedClientException"}
_CREDENTIALS_TEXT = re.compile(r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|Forbidden|\b403\b|"
                               r"Unable to locate credentials|NoCredentialsError|ExpiredToken", re.IGNORECASE)
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MINIO_ROOT_PASSWORD")


def describe_s3_failure(exc: BaseException) -> tuple[str, str] | None:
    """(kind, advice) for a botocore exception: kind is 'credentials', 'connection' or 'bucket';
    None when it is none of these (the caller words it)."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ProfileNotFound):
        return "credentials", f"AWS_PROFILE names a profile that does not exist ({exc}); {CREDENTIALS_HINT}"
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
        return "credentials", f"no usable S3 credentials ({type(exc).__name__}); {CREDENTIALS_HINT}"
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "?"))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in CREDENTIAL_CODES or status == 403:
            return "credentials", f"the S3 service refused the credentials ({code}); {CREDENTIALS_HINT}"
        if code == "NoSuchBucket":
            return "bucket", "the bucket does not exist (NoSuchBucket); check registry.uri / the bucket name"
        return None
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError,
                        bx.ConnectionClosedError, bx.ProxyConnectionError)):
        return "connection", (f"cannot reach the S3 endpoint ({type(exc).__name__}); is it up, and is "
                              "registry.endpoint_url right?")
    if _CREDENTIALS_TEXT.search(str(exc)):  # boto3's S3UploadFailedError wraps the service's answer in text
        return "credentials", f"the S3 service refused the credentials ({type(exc).__name__}); {CREDENTIALS_HINT}"
    return None


def redact(text: str) -> str:
    """`text` with the value of every secret variable of the environment replaced by '***'."""
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def dvc_failure_message(command: str, code: int, output: str, limit: int = 300) -> str:
    """The line for a failed `dvc push`/`dvc pull`: its output's tail (secrets redacted) plus, when the
    remote refused the credentials (often only DVC's bare "unexpected error - Forbidden"), a hint naming them."""
    tail = redact(output.strip())[-limit:]
    hint = (f"; the S3 remote refused the credentials: {CREDENTIALS_HINT}"
            if _CREDENTIALS_TEXT.search(output) else "")
    return f"{command} failed (exit {code}): {tail}{hint}"
