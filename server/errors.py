"""Every refusal the server can give, as S3 error codes.

    S3Error                      an S3 error response: code, HTTP status, message
    ├── (one subclass per code below, named after the code)

Raise them anywhere below the router (storage, auth, body decoding); the router
turns them into the S3 XML error body (``server.xml.error_body``) with the
request id.  Anything else that escapes a handler is a bug and answers 500
``InternalError``.
"""

from __future__ import annotations


class S3Error(Exception):
    """An S3 error response. ``code`` and ``status`` come from the subclass."""

    code = "InternalError"
    status = 500
    default_message = "We encountered an internal error. Please try again."

    def __init__(self, message: str | None = None, *, resource: str | None = None, **extra: str) -> None:
        self.message = message or self.default_message
        self.resource = resource
        # Extra XML elements AWS adds to some errors (e.g. BucketName, Key, ArgumentName).
        self.extra = dict(extra)
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status}, message={self.message!r})"


def _error(code: str, status: int, message: str) -> type[S3Error]:
    return type(code, (S3Error,), {"code": code, "status": status, "default_message": message})


# 400
InvalidArgument = _error("InvalidArgument", 400, "Invalid Argument")
InvalidRequest = _error("InvalidRequest", 400, "Invalid Request")
InvalidBucketName = _error("InvalidBucketName", 400, "The specified bucket is not valid.")
KeyTooLongError = _error("KeyTooLongError", 400, "Your key is too long.")
EntityTooLarge = _error("EntityTooLarge", 400, "Your proposed upload exceeds the maximum allowed object size.")
EntityTooSmall = _error("EntityTooSmall", 400, "Your proposed upload is smaller than the minimum allowed object size.")
BadDigest = _error("BadDigest", 400, "The Content-MD5 or checksum value that you specified did not match what the server received.")
InvalidDigest = _error("InvalidDigest", 400, "The Content-MD5 you specified is not valid.")
IncompleteBody = _error("IncompleteBody", 400, "You did not provide the number of bytes specified by the Content-Length HTTP header.")
MalformedXML = _error("MalformedXML", 400, "The XML you provided was not well-formed or did not validate against our published schema.")
TooManyParts = _error("TooManyParts", 400, "The object has reached the maximum number of appends.")
RequestTimeout = _error("RequestTimeout", 400, "Your socket connection to the server was not read from or written to within the timeout period.")
AuthorizationHeaderMalformed = _error("AuthorizationHeaderMalformed", 400, "The authorization header is malformed.")
AuthorizationQueryParametersError = _error(
    "AuthorizationQueryParametersError", 400, "Error parsing the X-Amz-Credential parameter."
)
ExpiredToken = _error("ExpiredToken", 400, "The provided token has expired.")
InvalidToken = _error("InvalidToken", 400, "The provided token is malformed or otherwise invalid.")
InvalidPart = _error("InvalidPart", 400, "One or more of the specified parts could not be found.")
InvalidPartOrder = _error("InvalidPartOrder", 400, "The list of parts was not in ascending order.")
XAmzContentSHA256Mismatch = _error(
    "XAmzContentSHA256Mismatch", 400, "The provided 'x-amz-content-sha256' header does not match what was computed."
)
InvalidRange = _error("InvalidRange", 416, "The requested range is not satisfiable")
# 403
AccessDenied = _error("AccessDenied", 403, "Access Denied")
SignatureDoesNotMatch = _error(
    "SignatureDoesNotMatch",
    403,
    "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
)
InvalidAccessKeyId = _error("InvalidAccessKeyId", 403, "The AWS Access Key Id you provided does not exist in our records.")
RequestTimeTooSkewed = _error(
    "RequestTimeTooSkewed", 403, "The difference between the request time and the current time is too large."
)
# 404
NoSuchBucket = _error("NoSuchBucket", 404, "The specified bucket does not exist")
NoSuchKey = _error("NoSuchKey", 404, "The specified key does not exist.")
NoSuchUpload = _error("NoSuchUpload", 404, "The specified upload does not exist.")
NoSuchVersion = _error("NoSuchVersion", 404, "The specified version does not exist.")
# 404s of bucket configurations this server never has (the answers AWS gives a bucket without them)
NoSuchBucketPolicy = _error("NoSuchBucketPolicy", 404, "The bucket policy does not exist")
NoSuchLifecycleConfiguration = _error("NoSuchLifecycleConfiguration", 404, "The lifecycle configuration does not exist")
NoSuchTagSet = _error("NoSuchTagSet", 404, "The TagSet does not exist")
NoSuchCORSConfiguration = _error("NoSuchCORSConfiguration", 404, "The CORS configuration does not exist")
NoSuchWebsiteConfiguration = _error(
    "NoSuchWebsiteConfiguration", 404, "The specified bucket does not have a website configuration"
)
ServerSideEncryptionConfigurationNotFoundError = _error(
    "ServerSideEncryptionConfigurationNotFoundError", 404, "The server side encryption configuration was not found"
)
OwnershipControlsNotFoundError = _error(
    "OwnershipControlsNotFoundError", 404, "The bucket ownership controls were not found"
)
NoSuchPublicAccessBlockConfiguration = _error(
    "NoSuchPublicAccessBlockConfiguration", 404, "The public access block configuration was not found"
)
ObjectLockConfigurationNotFoundError = _error(
    "ObjectLockConfigurationNotFoundError", 404, "Object Lock configuration does not exist for this bucket"
)
ReplicationConfigurationNotFoundError = _error(
    "ReplicationConfigurationNotFoundError", 404, "The replication configuration was not found"
)
# 405, 409, 411, 412, 501, 503
MethodNotAllowed = _error("MethodNotAllowed", 405, "The specified method is not allowed against this resource.")
BucketAlreadyExists = _error("BucketAlreadyExists", 409, "The requested bucket name is not available.")
BucketAlreadyOwnedByYou = _error("BucketAlreadyOwnedByYou", 409, "Your previous request to create the named bucket succeeded and you already own it.")
BucketNotEmpty = _error("BucketNotEmpty", 409, "The bucket you tried to delete is not empty")
OperationAborted = _error("OperationAborted", 409, "A conflicting conditional operation is currently in progress against this resource.")
MissingContentLength = _error("MissingContentLength", 411, "You must provide the Content-Length HTTP header.")
PreconditionFailed = _error("PreconditionFailed", 412, "At least one of the pre-conditions you specified did not hold")
NotImplemented_ = _error("NotImplemented", 501, "A header or query you provided implies functionality that is not implemented.")
ServiceUnavailable = _error("ServiceUnavailable", 503, "Please reduce your request rate.")
InternalError = _error("InternalError", 500, "We encountered an internal error. Please try again.")
