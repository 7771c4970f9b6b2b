//! Where the worker finds a provider's API key for an agent: Supabase Vault, then settings.
//! Keys are read inside the claim's transaction and only ever handed to the HTTP threads.
use crate::llm;
use crate::settings;

/// API keys, looked up once a turn per provider and agent. The first that exists wins: the
/// Supabase Vault secret `ai_agents.<provider>.agent.<agent id>`, then
/// `ai_agents.<provider>.organization.<organization id>`, then the secret named by
/// ai_agents.<provider>_api_key_secret (all only when Vault is installed; the extension works
/// without it), then the superuser-only setting ai_agents.<provider>_api_key. Keys live in
/// Vault or settings only: never in a table of the extension.
#[derive(Default)]
pub struct Keys {
    vault: Option<bool>,
    found: std::collections::HashMap<(llm::Provider, String), Option<String>>,
}

impl Keys {
    pub fn get(
        &mut self,
        client: &pgrx::spi::SpiClient,
        provider: llm::Provider,
        agent: &str,
        organization: &str,
    ) -> Result<Option<String>, pgrx::spi::Error> {
        if let Some(known) = self.found.get(&(provider, agent.to_string())) {
            return Ok(known.clone());
        }
        let (name, secret, setting) = match provider {
            llm::Provider::OpenAi => (
                "openai",
                &settings::OPENAI_API_KEY_SECRET,
                &settings::OPENAI_API_KEY,
            ),
            llm::Provider::Anthropic => (
                "anthropic",
                &settings::ANTHROPIC_API_KEY_SECRET,
                &settings::ANTHROPIC_API_KEY,
            ),
        };
        let vault = match self.vault {
            Some(known) => known,
            None => *self.vault.insert(
                client
                    .select(
                        "SELECT to_regclass('vault.decrypted_secrets') IS NOT NULL",
                        None,
                        &[],
                    )?
                    .first()
                    .get_one::<bool>()?
                    .unwrap_or(false),
            ),
        };
        let mut key = None;
        if vault {
            let names = vec![
                format!("ai_agents.{name}.agent.{agent}"),
                format!("ai_agents.{name}.organization.{organization}"),
                settings::text(secret),
            ];
            let found = client.select(
                "SELECT s.decrypted_secret FROM vault.decrypted_secrets s \
                  WHERE s.name = ANY($1) AND s.name <> '' \
                  ORDER BY array_position($1, s.name::text) LIMIT 1",
                Some(1),
                &[names.into()],
            )?;
            // No secret of these names: the setting below.
            if !found.is_empty() {
                key = found.first().get_one::<String>()?;
            }
        }
        let key = key.or_else(|| Some(settings::text(setting)).filter(|k| !k.is_empty()));
        self.found
            .insert((provider, agent.to_string()), key.clone());
        Ok(key)
    }
}
