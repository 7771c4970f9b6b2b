//! Which base URLs the worker may call: a tenant who can edit an agent's config must not be
//! able to point the worker, and the API key it sends, at an internal service.
use super::Failure;

/// `Ok` when `base_url` starts with one of the comma-separated prefixes of `allowlist`
/// (ai_agents.allowed_base_urls). A prefix ends at a path boundary - `https://api.openai.com`
/// allows `https://api.openai.com/v1`, not `https://api.openai.com.evil.example` - and the
/// comparison ignores case and trailing slashes.
pub fn check_base_url(base_url: &str, allowlist: &str) -> Result<(), Failure> {
    let with_slash = |s: &str| format!("{}/", s.trim().trim_end_matches('/').to_lowercase());
    let base = with_slash(base_url);
    let allowed = allowlist
        .split(',')
        .map(str::trim)
        .filter(|prefix| !prefix.is_empty())
        .any(|prefix| base.starts_with(&with_slash(prefix)));
    if allowed {
        Ok(())
    } else {
        Err(Failure::not_sent(format!(
            "base URL {} is not allowed: it matches no prefix of ai_agents.allowed_base_urls; no request was sent",
            base_url.trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = "https://api.openai.com/,https://api.anthropic.com/";

    #[test]
    fn the_providers_are_allowed_by_default() {
        assert!(check_base_url("https://api.openai.com/v1", DEFAULT).is_ok());
        assert!(check_base_url("HTTPS://API.Anthropic.com/v1/", DEFAULT).is_ok());
    }

    #[test]
    fn other_hosts_and_lookalikes_are_refused() {
        for url in [
            "http://127.0.0.1:8080/v1",
            "http://169.254.169.254/latest",
            "https://api.openai.com.evil.example/v1",
            "https://api.openai.com@evil.example/v1",
            "http://api.openai.com/v1",
            "",
        ] {
            let failure = check_base_url(url, DEFAULT).expect_err(url);
            assert!(failure.permanent && failure.http_status.is_none());
            assert!(
                failure.message.contains("is not allowed")
                    && failure.message.contains("no request was sent"),
                "{}",
                failure.message
            );
        }
    }

    #[test]
    fn loopback_only_when_configured() {
        let list = "https://api.openai.com, http://127.0.0.1:8089";
        assert!(check_base_url("http://127.0.0.1:8089/v1", list).is_ok());
        assert!(check_base_url("http://127.0.0.1:8089", list).is_ok());
        assert!(check_base_url("http://127.0.0.1:80890/v1", list).is_err());
        assert!(check_base_url("http://127.0.0.1:9/v1", list).is_err());
        assert!(check_base_url("https://api.openai.com/v1", "").is_err());
    }
}
