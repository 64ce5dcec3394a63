//! The one error type of this crate. Callers match on variants (and the `is_*` helpers),
//! never on message text; messages say what failed and what the user can do. No type of a
//! dependency (reqwest, roxmltree) appears here.

use std::fmt;
use std::time::Duration;

use crate::credentials::CredentialsError;
use crate::wait::fmt_duration;

/// An error answer of the EC2 API, after any retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The API action, e.g. `RunInstances`.
    pub action: &'static str,
    pub region: String,
    /// The EC2 error code, e.g. `InvalidInstanceID.NotFound`; `HTTP <status>` when the
    /// body carried none (a proxy's HTML page, an empty 503).
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
    pub status: u16,
    /// How many attempts were made (1 when the error is not retryable).
    pub attempts: u32,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EC2 {} in {} failed: {}",
            self.action, self.region, self.code
        )?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        write!(f, " (HTTP {}", self.status)?;
        if let Some(id) = &self.request_id {
            write!(f, ", request id {id}")?;
        }
        if self.attempts > 1 {
            write!(f, ", after {} attempts", self.attempts)?;
        }
        f.write_str(")")
    }
}

/// Everything that can go wrong talking to EC2.
#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    /// EC2 refused the call (bad parameter, missing resource, limit reached, ...).
    #[error("{0}")]
    Api(Box<ApiError>),

    /// The credentials were rejected or lack permission for this action.
    #[error(
        "{error}; check your credentials ({credentials}): the access key, secret key and \
         session token must be valid and current, and allowed to call ec2:{action}",
        action = .error.action
    )]
    Auth {
        error: Box<ApiError>,
        /// Where the credentials came from, e.g. `profile "ci" in /home/u/.aws/credentials`.
        credentials: String,
    },

    /// Still throttled when the retry budget ran out.
    #[error(
        "{0}; EC2 kept throttling this call: the account's API rate limit is exhausted \
         (other tools or builds in the same account and region?); retry later or raise the \
         retry attempts"
    )]
    Throttled(Box<ApiError>),

    /// No HTTP answer: connection refused, reset, timed out, TLS failure.
    #[error(
        "could not reach EC2 at {endpoint} for {action} ({attempts} attempts): {detail}; check \
         the network, the region and the endpoint setting"
    )]
    Transport {
        action: &'static str,
        endpoint: String,
        attempts: u32,
        detail: String,
    },

    /// A waiter ran out of time.
    #[error(
        "timed out after {} waiting for {what} (last state: {last_state}); raise the wait \
         timeout if the resource is just slow",
        fmt_duration(*.waited)
    )]
    WaitTimeout {
        what: String,
        waited: Duration,
        last_state: String,
    },

    /// A waiter saw a state from which the wanted one cannot be reached.
    #[error("gave up waiting for {what}: it is {state}{}", reason_suffix(.reason))]
    WaitFailed {
        what: String,
        state: String,
        reason: Option<String>,
    },

    #[error(transparent)]
    Credentials(#[from] CredentialsError),

    /// The answer was not the XML it should be.
    #[error("malformed answer from EC2 to {action}: {detail}")]
    Malformed {
        action: &'static str,
        detail: String,
    },

    /// The answer was larger than the configured bound.
    #[error(
        "the answer to {action} is larger than {limit} bytes; refusing to read more (narrow the \
         request with filters, or raise max_response_bytes)"
    )]
    TooLarge { action: &'static str, limit: usize },

    /// The caller's request or client settings cannot be sent.
    #[error("invalid EC2 request: {0}")]
    InvalidInput(String),

    /// `source_ami_filter` matched nothing.
    #[error(
        "no AMI matches source_ami_filter {filter} in {region}; check the filter values and \
         owners (an image must be visible to this account)"
    )]
    NoSourceImage { filter: String, region: String },

    /// `source_ami_filter` matched several images and `most_recent` is off.
    #[error(
        "source_ami_filter {filter} matches {count} AMIs in {region} ({}); set most_recent = true \
         to take the newest, or narrow the filter",
        .ids.join(", ")
    )]
    AmbiguousSourceImage {
        filter: String,
        region: String,
        count: usize,
        /// Up to ten of the matching ids.
        ids: Vec<String>,
    },
}

fn reason_suffix(reason: &Option<String>) -> String {
    match reason {
        Some(r) if !r.is_empty() => format!(" ({r})"),
        _ => String::new(),
    }
}

/// Error codes that mean "the thing is not there (any more)". Cleanup treats them as done.
const NOT_FOUND_CODES: &[&str] = &[
    "InvalidAMIID.Unavailable",
    "InvalidAMIID.NotFound",
    "InvalidInstanceID.NotFound",
    "InvalidKeyPair.NotFound",
    "InvalidGroup.NotFound",
    "InvalidGroupId.NotFound",
    "InvalidSnapshot.NotFound",
    "InvalidVolume.NotFound",
    "InvalidVpcID.NotFound",
    "InvalidSubnetID.NotFound",
];

impl Ec2Error {
    /// The EC2 error code, for API, auth and throttling errors.
    pub fn code(&self) -> Option<&str> {
        self.api().map(|e| e.code.as_str())
    }

    /// The API error behind this error, if EC2 answered.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Ec2Error::Api(e) | Ec2Error::Throttled(e) => Some(e),
            Ec2Error::Auth { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The resource does not exist (or no longer does): deleting it again is a no-op.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Ec2Error::Api(e)
            if NOT_FOUND_CODES.contains(&e.code.as_str()) || e.code.ends_with(".NotFound"))
    }

    /// A resource with that name already exists (key pair, security group, AMI name).
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Ec2Error::Api(e) if e.code.ends_with(".Duplicate"))
    }

    /// Something still uses the resource (a security group of an instance that is still
    /// shutting down, a snapshot of a registered AMI): retry after it is released.
    pub fn is_in_use(&self) -> bool {
        matches!(self, Ec2Error::Api(e)
            if e.code == "DependencyViolation" || e.code.ends_with(".InUse"))
    }

    /// The credentials were rejected or are not allowed to do this.
    pub fn is_auth(&self) -> bool {
        matches!(self, Ec2Error::Auth { .. })
    }

    pub fn is_throttled(&self) -> bool {
        matches!(self, Ec2Error::Throttled(_))
    }

    pub fn is_wait_timeout(&self) -> bool {
        matches!(self, Ec2Error::WaitTimeout { .. })
    }
}

/// Codes that mean "slow down"; retried with backoff.
pub(crate) fn is_throttling_code(code: &str) -> bool {
    matches!(
        code,
        "Throttling"
            | "ThrottlingException"
            | "ThrottledException"
            | "RequestThrottledException"
            | "RequestThrottled"
            | "RequestLimitExceeded"
            | "TooManyRequestsException"
            | "ProvisionedThroughputExceededException"
            | "BandwidthLimitExceeded"
            | "SlowDown"
            | "PriorRequestNotComplete"
            | "EC2ThrottledException"
    )
}

/// Codes that mean the credentials are bad or lack permission.
pub(crate) fn is_auth_code(code: &str) -> bool {
    matches!(
        code,
        "AuthFailure"
            | "SignatureDoesNotMatch"
            | "InvalidClientTokenId"
            | "UnauthorizedOperation"
            | "AccessDenied"
            | "AccessDeniedException"
            | "UnrecognizedClientException"
            | "MissingAuthenticationToken"
            | "InvalidAccessKeyId"
            | "ExpiredToken"
            | "ExpiredTokenException"
            | "IncompleteSignature"
    )
}

/// Server-side trouble worth another attempt even with a 4xx-looking code.
pub(crate) fn is_transient_code(code: &str) -> bool {
    matches!(
        code,
        "InternalError"
            | "InternalFailure"
            | "ServiceUnavailable"
            | "Unavailable"
            | "RequestTimeout"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: &str) -> Box<ApiError> {
        Box::new(ApiError {
            action: "DescribeInstances",
            region: "us-east-1".into(),
            code: code.into(),
            message: "m".into(),
            request_id: Some("r-1".into()),
            status: 400,
            attempts: 1,
        })
    }

    #[test]
    fn classifies() {
        for c in [
            "InvalidInstanceID.NotFound",
            "InvalidKeyPair.NotFound",
            "InvalidGroup.NotFound",
            "InvalidAMIID.NotFound",
            "InvalidAMIID.Unavailable",
            "InvalidSnapshot.NotFound",
            "InvalidVolume.NotFound",
        ] {
            assert!(Ec2Error::Api(api(c)).is_not_found(), "{c}");
        }
        assert!(!Ec2Error::Api(api("InvalidParameterValue")).is_not_found());
        assert!(Ec2Error::Api(api("InvalidKeyPair.Duplicate")).is_duplicate());
        assert!(Ec2Error::Api(api("DependencyViolation")).is_in_use());
        assert!(Ec2Error::Api(api("InvalidSnapshot.InUse")).is_in_use());
        assert!(is_throttling_code("RequestLimitExceeded"));
        assert!(is_auth_code("SignatureDoesNotMatch"));
        assert!(!is_auth_code("InvalidInstanceID.NotFound"));
    }

    #[test]
    fn messages() {
        let e = Ec2Error::Api(api("InvalidInstanceID.NotFound"));
        assert_eq!(
            e.to_string(),
            "EC2 DescribeInstances in us-east-1 failed: InvalidInstanceID.NotFound: m (HTTP 400, request id r-1)"
        );
        let e = Ec2Error::Auth {
            error: api("AuthFailure"),
            credentials: "environment variables AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY".into(),
        };
        assert!(
            e.to_string()
                .contains("check your credentials (environment variables")
        );
        assert!(e.to_string().contains("ec2:DescribeInstances"));
        let e = Ec2Error::WaitTimeout {
            what: "instance i-0abc to be running".into(),
            waited: Duration::from_secs(600),
            last_state: "pending".into(),
        };
        assert!(e.to_string().starts_with(
            "timed out after 10m waiting for instance i-0abc to be running (last state: pending)"
        ));
    }
}
