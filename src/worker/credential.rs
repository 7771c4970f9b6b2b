//! The credential a call is made with - provider, base URL and API key - and its pause. A 429
//! with Retry-After pauses the credential that was refused, not the provider: an
//! organization's own key at its limit pauses that organization's calls only, and the shared
//! key everyone's who uses it. A credential is named by the first 16 hex digits of its key's
//! SHA-256 (the rate-limit usage view shows key names); the key itself is never kept.
use super::secrets::Keys;
use crate::error::OrReport;
use crate::llm::{self, Provider};
use crate::ratelimit;
use crate::settings;
use pgrx::datum::Interval;
use pgrx::prelude::*;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Pauses are kept over the one-minute window, as pause_rate_limit's default.
const WINDOW_US: u64 = 60_000_000;

/// Where calls for `provider` go: the agent's own config.base_url when it has one, else the
/// provider's setting.
pub fn base_url(provider: Provider, configured: Option<String>) -> String {
    let setting = match provider {
        Provider::OpenAi => &settings::OPENAI_BASE_URL,
        Provider::Anthropic => &settings::ANTHROPIC_BASE_URL,
    };
    configured
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| settings::text(setting))
}

/// The credential of one request.
pub struct Credential {
    provider: Provider,
    /// The rate-limit key it is paused under.
    name: String,
}

impl Credential {
    pub fn of(request: &llm::Request) -> Credential {
        Credential::new(
            request.provider,
            &request.base_url,
            request.api_key.as_deref(),
        )
    }

    fn new(provider: Provider, base_url: &str, api_key: Option<&str>) -> Credential {
        let key = match api_key.map(str::trim).filter(|k| !k.is_empty()) {
            Some(key) => Sha256::digest(key.as_bytes())[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            None => "no-key".to_string(),
        };
        let url = base_url.trim().trim_end_matches('/');
        Credential {
            provider,
            name: format!("credential:{provider}:{key}:{url}"),
        }
    }

    /// Refuses calls with this credential for `ahead` (a longer pause in force stays). A
    /// second key, one per provider, records that some credential of it is paused, so that a
    /// claim looks up keys only then.
    pub fn pause(&self, ahead: Duration) -> Result<(), crate::error::Error> {
        let us = u64::try_from(ahead.as_micros()).unwrap_or(u64::MAX);
        ratelimit::pause(&self.name, WINDOW_US, us)?;
        ratelimit::pause(&some_paused(self.provider), WINDOW_US, us)
    }
}

fn some_paused(provider: Provider) -> String {
    format!("credentials:{provider}")
}

/// How much longer the credential a task of this agent would be called with is paused (NULL:
/// not paused); claim_due_tasks asks it for each candidate. While no credential of the
/// provider is paused it is one lookup in shared memory; otherwise it finds the agent's key as
/// the worker would (secrets.rs). Declared in sql/idempotent/tasks.sql.
#[pg_extern(sql = false)]
fn credential_paused_for(
    provider: &str,
    agent_id: &str,
    organization_id: &str,
    configured_base_url: Option<String>,
) -> Option<Interval> {
    let provider = Provider::parse(provider)?;
    if ratelimit::paused_us(&some_paused(provider), WINDOW_US).or_report() == 0 {
        return None;
    }
    let key =
        Spi::connect(|client| Keys::default().get(client, provider, agent_id, organization_id))
            .unwrap_or_else(|e| error!("finding the API key of agent {agent_id} failed: {e}"));
    let credential = Credential::new(
        provider,
        &base_url(provider, configured_base_url),
        key.as_deref(),
    );
    let us = ratelimit::paused_us(&credential.name, WINDOW_US).or_report();
    (us > 0).then(|| ratelimit::interval_us(us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_is_its_provider_url_and_key_never_the_key_itself() {
        let key = "sk-live-0123456789abcdef";
        let a = Credential::new(Provider::OpenAi, "https://api.openai.com/v1/", Some(key));
        assert_eq!(
            a.name,
            Credential::new(
                Provider::OpenAi,
                " https://api.openai.com/v1",
                Some(" sk-live-0123456789abcdef ")
            )
            .name
        );
        assert!(
            !a.name.contains(key) && !a.name.contains("0123456789abcdef"),
            "{}",
            a.name
        );
        for other in [
            Credential::new(
                Provider::OpenAi,
                "https://api.openai.com/v1",
                Some("sk-other"),
            ),
            Credential::new(Provider::OpenAi, "https://proxy.example/v1", Some(key)),
            Credential::new(Provider::Anthropic, "https://api.openai.com/v1", Some(key)),
            Credential::new(Provider::OpenAi, "https://api.openai.com/v1", None),
        ] {
            assert_ne!(a.name, other.name);
        }
    }
}
