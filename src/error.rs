//! The one error type of the Rust side, mapped to SQLSTATEs where it reaches SQL.
use pgrx::datum::Interval;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidSchedule(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{0}")]
    DatetimeOutOfRange(String),
    #[error("{0}")]
    NullValue(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("ai_agents rate limits live in shared memory: add ai_agents to shared_preload_libraries and restart the server")]
    NotPreloaded,
    #[error("the rate-limit key table is full of keys that are still counting (raise ai_agents.rate_limit_max_keys); retry in {0}")]
    TableFull(Interval),
}

impl Error {
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            Error::InvalidSchedule(_) | Error::InvalidParameter(_) => {
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE
            }
            Error::DatetimeOutOfRange(_) => PgSqlErrorCode::ERRCODE_DATETIME_FIELD_OVERFLOW,
            Error::NullValue(_) => PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            Error::LimitExceeded(_) => PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            Error::NotPreloaded => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            Error::TableFull(_) => PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES,
        }
    }

    /// Raises this error as a Postgres ERROR; does not return.
    pub fn report(self) -> ! {
        ErrorReport::new(self.sqlstate(), self.to_string(), "ai_agents").report(PgLogLevel::ERROR);
        unreachable!("an ERROR report does not return")
    }
}

/// Unwraps a result at the SQL boundary, raising the error with its SQLSTATE.
pub trait OrReport<T> {
    fn or_report(self) -> T;
}

impl<T> OrReport<T> for Result<T, Error> {
    fn or_report(self) -> T {
        self.unwrap_or_else(|e| e.report())
    }
}
