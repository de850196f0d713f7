//! `ApiError`: every refusal the HTTP API can give, with its status and errno.
//!
//! Errors become responses in exactly one place (`service::error_response`). Bodies follow
//! Mozilla's services convention, `{"code","errno","error","message"}`; `docs/errors.md` lists
//! the errnos. Internal detail goes to the log, never into a response.

use http::StatusCode;

use crate::protocol::ProtocolError;

/// A refused request. Messages are written for the client developer who will read them.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidField(ProtocolError),
    #[error("the body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the password must be at least {min} characters")]
    PasswordTooShort { min: usize },
    #[error("{0}")]
    WeakSecret(String),
    #[error("missing credentials: send Authorization: Bearer <token>")]
    MissingBearer,
    #[error("the token is unknown, expired or revoked: sign in again")]
    InvalidToken,
    #[error("wrong email or password")]
    BadCredentials,
    #[error("missing or malformed Hawk Authorization header: {0}")]
    HawkHeader(&'static str),
    #[error("unknown device id: register again")]
    UnknownDevice,
    #[error("the Hawk MAC does not match the request")]
    HawkMac,
    #[error("stale timestamp: the clock differs from the server's by more than {skew_secs} s")]
    HawkStale {
        skew_secs: u64,
        now: u64,
        tsm: String,
    },
    #[error(
        "this nonce was already used, or the device sent more requests within one second than can be told apart from replays: sign each request with a fresh nonce"
    )]
    HawkReplay,
    #[error("userid does not match the signed-in account")]
    WrongUser,
    #[error("sign-up is closed on this server: ask its operator for an account")]
    SignupClosed,
    #[error("this account already has the maximum of {max} devices: forget one first")]
    DeviceLimit { max: usize },
    #[error("not found")]
    NotFound,
    #[error("method not allowed here; allowed: {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error(
        "unsupported content type: send application/json (application/octet-stream for a blob chunk)"
    )]
    UnsupportedMediaType,
    #[error("too many attempts: try again in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("the server is at its connection limit: try again shortly")]
    Overloaded,
    #[error("the server cannot save changes right now: try again later")]
    StorageUnavailable,
    #[error("internal error")]
    Internal(String),
    #[error("pushurl: {0}")]
    PushUrlRefused(String),
    #[error(
        "missing or wrong X-CSRF-Token: a request signed in by cookie that changes anything must echo the token from GET /1/web/session"
    )]
    CsrfRejected,
    #[error("the password is wrong: nothing was erased")]
    StepUpFailed,
    #[error(
        "an erase from a browser session needs the owner's password again: use POST /1/devices/{{id}}/erase"
    )]
    StepUpRequired,
    #[error("the identity token is not valid: {0}")]
    OidcToken(String),
    #[error("the identity provider cannot be reached: try again shortly")]
    OidcUnavailable,
    #[error("signing in with the identity provider failed: {0}")]
    OidcLogin(String),
    #[error("the revision changed: it is now {current} (read it again, merge, and retry)")]
    SyncRevisionChanged { current: u64 },
    #[error("the record already exists, at revision {current} (If-None-Match: * creates only)")]
    SyncRecordExists { current: u64 },
    #[error("a record's payload is larger than the limit of {limit} bytes")]
    SyncRecordTooLarge { limit: usize },
    #[error("the batch is too large: {reason}")]
    SyncBatchTooLarge { reason: String },
    #[error("the batch was not applied: {count} record(s) are invalid (see failed)")]
    SyncBatchRejected { count: usize },
    #[error("over quota: {reason}")]
    SyncOverQuota { reason: String },
    #[error(
        "changes before revision {horizon} have been purged: read the collection again from since=0"
    )]
    SyncHistoryPurged { horizon: u64 },
    #[error("too many change feeds open for this account (at most {max}): close one first")]
    SyncTooManyFeeds { max: usize },
    #[error("the server holds as many change feeds as it can: try again shortly")]
    SyncFeedsFull,
    #[error(
        "this account's data lives in the storage it linked: send the storage key as X-Storage-Key"
    )]
    RemoteKeyRequired,
    #[error("{header} must be a 256-bit key in unpadded base64url (43 characters)")]
    RemoteKeyMalformed { header: String },
    #[error("the storage key does not open this account's linked-storage credentials")]
    RemoteKeyWrong,
    #[error("the linked storage cannot be reached right now: nothing was changed; try again later")]
    RemoteUnavailable,
    #[error("{0}")]
    RemoteFailed(String),
    #[error("the storage cannot be linked: {0}")]
    RemoteLinkRejected(String),
    #[error("this account has no linked storage")]
    RemoteNotLinked,
    #[error(
        "this account already has a linked storage: unlink it first (DELETE /1/remote-storage)"
    )]
    RemoteAlreadyLinked,
    #[error("the linked storage changed during this request: try again")]
    RemoteLinkChanged,
    #[error("the blob is not complete: {missing} chunk(s) still to upload (see missing)")]
    BlobIncomplete { missing: usize },
    #[error("{0}")]
    BlobChunkInvalid(String),
    #[error("a blob may be at most {limit} bytes")]
    BlobTooLarge { limit: u64 },
    #[error("over the blob quota: {reason}")]
    BlobOverQuota { reason: String },
}

// === ApiError ===

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            InvalidJson(_) | InvalidField(_) | PasswordTooShort { .. } | WeakSecret(_) => {
                StatusCode::BAD_REQUEST
            }
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            MissingBearer
            | InvalidToken
            | BadCredentials
            | HawkHeader(_)
            | UnknownDevice
            | HawkMac
            | HawkStale { .. }
            | HawkReplay => StatusCode::UNAUTHORIZED,
            WrongUser | SignupClosed | DeviceLimit { .. } => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            EmailTaken => StatusCode::CONFLICT,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Overloaded | StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            PushUrlRefused(_) => StatusCode::BAD_REQUEST,
            CsrfRejected | StepUpFailed | StepUpRequired => StatusCode::FORBIDDEN,
            OidcToken(_) => StatusCode::UNAUTHORIZED,
            OidcUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            OidcLogin(_) => StatusCode::BAD_REQUEST,
            SyncRevisionChanged { .. } | SyncRecordExists { .. } => StatusCode::PRECONDITION_FAILED,
            SyncRecordTooLarge { .. } | SyncBatchTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            SyncBatchRejected { .. } => StatusCode::BAD_REQUEST,
            SyncOverQuota { .. } => StatusCode::INSUFFICIENT_STORAGE,
            SyncHistoryPurged { .. } => StatusCode::GONE,
            SyncTooManyFeeds { .. } => StatusCode::TOO_MANY_REQUESTS,
            SyncFeedsFull => StatusCode::SERVICE_UNAVAILABLE,
            RemoteKeyRequired | RemoteKeyMalformed { .. } | RemoteLinkRejected(_) => {
                StatusCode::BAD_REQUEST
            }
            RemoteKeyWrong => StatusCode::FORBIDDEN,
            RemoteUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            RemoteFailed(_) => StatusCode::BAD_GATEWAY,
            RemoteNotLinked | RemoteAlreadyLinked | RemoteLinkChanged | BlobIncomplete { .. } => {
                StatusCode::CONFLICT
            }
            BlobChunkInvalid(_) => StatusCode::BAD_REQUEST,
            BlobTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BlobOverQuota { .. } => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    /// The stable number a client can switch on; listed in `docs/errors.md`.
    pub fn errno(&self) -> u32 {
        use ApiError::*;
        match self {
            InvalidJson(_) => 100,
            InvalidField(_) => 101,
            BodyTooLarge { .. } => 102,
            PasswordTooShort { .. } => 103,
            WeakSecret(_) => 104,
            UnsupportedMediaType => 105,
            MissingBearer => 110,
            InvalidToken => 111,
            BadCredentials => 112,
            HawkHeader(_) => 113,
            UnknownDevice => 114,
            HawkMac => 115,
            HawkStale { .. } => 116,
            HawkReplay => 117,
            WrongUser => 120,
            SignupClosed => 121,
            DeviceLimit { .. } => 122,
            NotFound => 130,
            MethodNotAllowed { .. } => 131,
            EmailTaken => 132,
            RateLimited { .. } => 140,
            Overloaded => 150,
            StorageUnavailable => 160,
            Internal(_) => 999,
            PushUrlRefused(_) => 230,
            CsrfRejected => 200,
            StepUpFailed => 201,
            StepUpRequired => 202,
            OidcToken(_) => 203,
            OidcUnavailable => 204,
            OidcLogin(_) => 205,
            SyncRevisionChanged { .. } => 300,
            SyncRecordExists { .. } => 301,
            SyncRecordTooLarge { .. } => 302,
            SyncBatchTooLarge { .. } => 303,
            SyncBatchRejected { .. } => 304,
            SyncOverQuota { .. } => 305,
            SyncHistoryPurged { .. } => 306,
            SyncTooManyFeeds { .. } => 307,
            SyncFeedsFull => 308,
            RemoteKeyRequired => 350,
            RemoteKeyMalformed { .. } => 351,
            RemoteKeyWrong => 352,
            RemoteUnavailable => 353,
            RemoteFailed(_) => 354,
            RemoteLinkRejected(_) => 355,
            RemoteNotLinked => 356,
            RemoteAlreadyLinked => 357,
            RemoteLinkChanged => 358,
            BlobIncomplete { .. } => 359,
            BlobChunkInvalid(_) => 360,
            BlobTooLarge { .. } => 361,
            BlobOverQuota { .. } => 362,
        }
    }

    /// The text sent to the client. Internal errors say nothing about their cause.
    pub fn public_message(&self) -> String {
        self.to_string()
    }
}

impl From<ProtocolError> for ApiError {
    fn from(e: ProtocolError) -> Self {
        if e.field.is_empty() && e.reason.starts_with("the body is not valid JSON") {
            ApiError::InvalidJson(e.reason)
        } else {
            ApiError::InvalidField(e)
        }
    }
}
