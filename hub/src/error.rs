//! The one place where the hub's errors become gRPC statuses.

use tonic::{Code, Status};

use crate::live::members::MembersError;
use crate::pki::CsrError;
use crate::snapshot::SnapshotError;
use crate::source::SourceError;
use crate::store::StoreError;

impl From<SourceError> for Status {
    fn from(e: SourceError) -> Self {
        let code = match &e {
            SourceError::BadUrl { .. } | SourceError::BadOption { .. } => Code::InvalidArgument,
            SourceError::MissingCredential { .. }
            | SourceError::HoldsHubFiles { .. }
            | SourceError::PrefixOutside { .. } => Code::FailedPrecondition,
            SourceError::NotFound { .. } => Code::NotFound,
            SourceError::Denied { .. } => Code::PermissionDenied,
            SourceError::Changed { .. } => Code::Aborted,
            SourceError::Io { .. } => Code::Unavailable,
        };
        Status::new(code, e.to_string())
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::AlreadyExists { .. } => Code::AlreadyExists,
            StoreError::NotFound { .. } => Code::NotFound,
            StoreError::Conflict { .. } => Code::Aborted,
            StoreError::Refused(_) => Code::FailedPrecondition,
            // The shared database is down or unreachable: another try (or another hub) may work.
            StoreError::Postgres(e) if e.code().is_none() => Code::Unavailable,
            StoreError::Pool(_) => Code::Unavailable,
            StoreError::Schema { .. }
            | StoreError::Corrupt(_)
            | StoreError::Task(_)
            | StoreError::Db(_)
            | StoreError::Postgres(_)
            | StoreError::Config(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

impl From<SnapshotError> for Status {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Source(e) => e.into(),
            SnapshotError::Store(e) => e.into(),
            SnapshotError::EmptyPrefix { .. } => Status::failed_precondition(e.to_string()),
            SnapshotError::BadObject { .. }
            | SnapshotError::OutsideLinks { .. }
            | SnapshotError::LinkCycles { .. }
            | SnapshotError::TooLarge { .. } => Status::failed_precondition(e.to_string()),
            SnapshotError::Read { .. } => Status::unavailable(e.to_string()),
            SnapshotError::Task(_) => Status::internal(e.to_string()),
        }
    }
}

impl From<MembersError> for Status {
    fn from(e: MembersError) -> Self {
        let code = match &e {
            MembersError::NameTaken { .. } => Code::AlreadyExists,
            MembersError::NotLive { .. } | MembersError::WrongSession { .. } => Code::PermissionDenied,
        };
        Status::new(code, e.to_string())
    }
}

/// An argument that was not valid (a name, a phase, a replication mode).
pub(crate) fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

pub(crate) fn unknown_dataset(name: &str) -> Status {
    Status::not_found(format!("dataset {name:?} does not exist; `aq dataset list` shows the known ones"))
}

impl From<CsrError> for Status {
    fn from(e: CsrError) -> Self {
        match e {
            CsrError::Invalid(_) | CsrError::TooLarge(_) => Status::invalid_argument(e.to_string()),
            CsrError::Sign { .. } => Status::internal(e.to_string()),
        }
    }
}
