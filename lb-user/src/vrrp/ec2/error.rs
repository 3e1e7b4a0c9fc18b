//! Errors of the EC2 side, by class: what the caller does about an error
//! (retry it, or stop that step and report it) follows from the class, which
//! comes from the AWS error code and the HTTP status, never from the text.

use std::{fmt, time::Duration};

use aws_sdk_ec2::{
    config::http::HttpResponse as Response,
    error::{ProvideErrorMetadata, SdkError},
    operation::RequestId,
};

/// What kind of failure an error is, and so what to do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Asking again will not help: a missing permission, an unknown
    /// resource, a parameter EC2 refuses. The step stops and is reported.
    Permanent,
    /// EC2 asked us to slow down (`RequestLimitExceeded`).
    Throttled,
    /// A 5xx, a refused or broken connection: retried with backoff.
    Transient,
    /// The attempt ran out of time (its outcome is unknown).
    Timeout,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Permanent => "permanent",
            ErrorClass::Throttled => "throttled",
            ErrorClass::Transient => "transient",
            ErrorClass::Timeout => "timeout",
        }
    }

    /// Whether trying again later may succeed.
    pub fn retryable(self) -> bool {
        self != ErrorClass::Permanent
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failed EC2 (or instance metadata) operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ec2Error {
    /// The EC2 API answered with an error, or could not be reached.
    #[error("{operation}: {class}{}{}: {message}{}",
        code.as_deref().map(|c| format!(" {c}")).unwrap_or_default(),
        status.map(|s| format!(" (HTTP {s})")).unwrap_or_default(),
        request_id.as_deref().map(|r| format!(" (request id {r})")).unwrap_or_default())]
    Api {
        operation: &'static str,
        class: ErrorClass,
        /// The AWS error code (`UnauthorizedOperation`, ...), when EC2 answered.
        code: Option<String>,
        status: Option<u16>,
        message: String,
        request_id: Option<String>,
    },
    /// Instance metadata (IMDSv2) could not be read.
    #[error("instance metadata {path}: {class}: {message}")]
    Metadata {
        path: String,
        class: ErrorClass,
        message: String,
    },
    /// What EC2 or the instance says contradicts the configuration or the
    /// instance (an ENI of another instance, an address outside its subnet).
    #[error("{0}")]
    Mismatch(String),
    /// The API accepted a change but does not show it after the time
    /// allowed (EC2 applies some changes asynchronously).
    #[error("{0}")]
    NotApplied(String),
    /// No AWS region, no credentials.
    #[error("{0}")]
    Setup(String),
}

impl Ec2Error {
    pub fn class(&self) -> ErrorClass {
        match self {
            Ec2Error::Api { class, .. } | Ec2Error::Metadata { class, .. } => *class,
            Ec2Error::Mismatch(_) | Ec2Error::Setup(_) => ErrorClass::Permanent,
            Ec2Error::NotApplied(_) => ErrorClass::Transient,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            Ec2Error::Api { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    pub fn request_id(&self) -> Option<&str> {
        match self {
            Ec2Error::Api { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }
}

/// EC2 error codes that mean "slow down".
const THROTTLING: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "TooManyRequestsException",
    "PriorRequestNotComplete",
];

/// EC2 error codes of a server-side problem worth retrying.
const TRANSIENT: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "IdempotentParameterMismatch",
];

/// The class of an answer from EC2: its code first, then its HTTP status.
pub fn classify(code: Option<&str>, status: Option<u16>) -> ErrorClass {
    if let Some(c) = code {
        if THROTTLING.contains(&c) {
            return ErrorClass::Throttled;
        }
        if TRANSIENT.contains(&c) {
            return ErrorClass::Transient;
        }
    }
    match status {
        Some(429) => ErrorClass::Throttled,
        Some(s) if s >= 500 => ErrorClass::Transient,
        // An answer without a code and without a status: something between
        // us and EC2 (a proxy) said no; worth another try.
        None if code.is_none() => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// The longest message kept for the log and `lbctl status`.
const MESSAGE_MAX: usize = 300;

fn shorten(mut s: String) -> String {
    if s.len() > MESSAGE_MAX {
        let mut cut = MESSAGE_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Each distinct message of an error's chain, on one line (the SDK's own
/// Display says only "dispatch failure"; the cause is further down).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        let text = text.lines().next().unwrap_or_default().trim().to_owned();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    shorten(parts.join(": "))
}

/// An SDK error of `operation` as an [`Ec2Error`] with its class.
pub fn from_sdk<E>(operation: &'static str, e: SdkError<E, Response>) -> Ec2Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let request_id = e.request_id().map(str::to_owned);
    let (class, code, status, message) = match &e {
        SdkError::TimeoutError(_) => (ErrorClass::Timeout, None, None, chain(&e)),
        SdkError::DispatchFailure(d) => {
            let class = if d.is_timeout() {
                ErrorClass::Timeout
            } else {
                ErrorClass::Transient
            };
            (class, None, None, chain(&e))
        }
        SdkError::ResponseError(r) => {
            let status = r.raw().status().as_u16();
            (classify(None, Some(status)), None, Some(status), chain(&e))
        }
        SdkError::ServiceError(s) => {
            let err = s.err();
            let status = s.raw().status().as_u16();
            let code = err.code().map(str::to_owned);
            let message = err
                .message()
                .map(|m| shorten(m.to_owned()))
                .unwrap_or_else(|| chain(&e));
            (
                classify(code.as_deref(), Some(status)),
                code,
                Some(status),
                message,
            )
        }
        _ => (ErrorClass::Permanent, None, None, chain(&e)),
    };
    Ec2Error::Api {
        operation,
        class,
        code,
        status,
        message,
        request_id,
    }
}

/// The pause before retry number `attempt` (1-based): `base` doubling up to
/// `cap`, with full jitter over its upper half (throttling starts higher).
pub fn backoff(attempt: u32, class: ErrorClass, base: Duration, cap: Duration) -> Duration {
    let base = if class == ErrorClass::Throttled {
        base * 4
    } else {
        base
    };
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let top = exp.min(cap);
    let half = top / 2;
    half + half.mul_f64(fastrand::f64())
}

/// An IAM action named by a refused DryRun: `UnauthorizedOperation` means the
/// role lacks the permission for `operation`.
pub fn is_unauthorized(e: &Ec2Error) -> bool {
    matches!(
        e.code(),
        Some("UnauthorizedOperation" | "AccessDenied" | "AuthFailure")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_give_the_class() {
        assert_eq!(
            classify(Some("RequestLimitExceeded"), Some(503)),
            ErrorClass::Throttled
        );
        assert_eq!(
            classify(Some("InternalError"), Some(500)),
            ErrorClass::Transient
        );
        assert_eq!(
            classify(Some("Unavailable"), Some(503)),
            ErrorClass::Transient
        );
        assert_eq!(
            classify(Some("UnauthorizedOperation"), Some(403)),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify(Some("InvalidNetworkInterfaceID.NotFound"), Some(400)),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify(Some("InvalidParameterValue"), Some(400)),
            ErrorClass::Permanent
        );
        assert_eq!(classify(None, Some(502)), ErrorClass::Transient);
        assert_eq!(classify(None, Some(429)), ErrorClass::Throttled);
        assert_eq!(classify(None, Some(403)), ErrorClass::Permanent);
        assert!(!ErrorClass::Permanent.retryable());
        assert!(ErrorClass::Timeout.retryable());
    }

    #[test]
    fn an_api_error_names_operation_class_code_and_request_id() {
        let e = Ec2Error::Api {
            operation: "AssociateAddress",
            class: ErrorClass::Permanent,
            code: Some("UnauthorizedOperation".into()),
            status: Some(403),
            message: "You are not authorized to perform this operation.".into(),
            request_id: Some("7a62c49f-347e-4fc4-9331-6e8eEXAMPLE".into()),
        };
        assert_eq!(
            e.to_string(),
            "AssociateAddress: permanent UnauthorizedOperation (HTTP 403): You are not \
             authorized to perform this operation. (request id 7a62c49f-347e-4fc4-9331-6e8eEXAMPLE)"
        );
        assert!(is_unauthorized(&e));
        assert_eq!(e.class(), ErrorClass::Permanent);
        assert_eq!(e.request_id(), Some("7a62c49f-347e-4fc4-9331-6e8eEXAMPLE"));
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let (base, cap) = (Duration::from_millis(200), Duration::from_secs(5));
        for attempt in 1..20 {
            let d = backoff(attempt, ErrorClass::Transient, base, cap);
            let top = (base * (1 << (attempt - 1).min(16))).min(cap);
            assert!(d >= top / 2 && d <= top, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(1, ErrorClass::Throttled, base, cap) >= Duration::from_millis(400));
    }
}
