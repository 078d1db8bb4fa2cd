//! Azure ACR: the federated token (Workload Identity) exchanged at Entra ID for an access
//! token, exchanged at the registry for a refresh token.

use std::time::Duration;

use super::{CloudError, CloudLogin, OAuthToken};
use crate::registry::credentials::Credential;

/// ACR's user name for a refresh token.
const ACR_NULL_USER: &str = "00000000-0000-0000-0000-000000000000";

impl CloudLogin {
    pub(super) async fn azure(
        &self,
        host: &str,
        base_url: &str,
    ) -> Result<(Credential, Duration), CloudError> {
        let (Some(token_file), Some(client), Some(tenant)) = (
            self.env.get("AZURE_FEDERATED_TOKEN_FILE"),
            self.env.get("AZURE_CLIENT_ID"),
            self.env.get("AZURE_TENANT_ID"),
        ) else {
            return Err(CloudError::NoIdentity("no Azure Workload Identity (AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID, AZURE_TENANT_ID)".into()));
        };
        let assertion = CloudError::read("AZURE_FEDERATED_TOKEN_FILE", token_file)?;
        let authority = self
            .env
            .get("AZURE_AUTHORITY_HOST")
            .unwrap_or("https://login.microsoftonline.com/")
            .trim_end_matches('/');
        let body = self
            .send(
                self.http
                    .post(format!("{authority}/{tenant}/oauth2/v2.0/token"))
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("client_id", client),
                        ("scope", "https://management.azure.com/.default"),
                        (
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                        ),
                        ("client_assertion", assertion.trim()),
                    ]),
                "Entra ID token",
            )
            .await?;
        let entra: OAuthToken = serde_json::from_str(&body)
            .map_err(|e| CloudError::bad("Entra ID token", format!("does not parse: {e}")))?;
        let service = host.split(':').next().unwrap_or(host);
        let body = self
            .send(
                self.http
                    .post(format!("{base_url}/oauth2/exchange"))
                    .form(&[
                        ("grant_type", "access_token"),
                        ("service", service),
                        ("tenant", tenant),
                        ("access_token", entra.access_token.as_str()),
                    ]),
                "ACR token exchange",
            )
            .await?;
        #[derive(serde::Deserialize)]
        struct Exchange {
            refresh_token: String,
        }
        let exchange: Exchange = serde_json::from_str(&body)
            .map_err(|e| CloudError::bad("ACR token exchange", format!("does not parse: {e}")))?;
        Ok((
            Credential {
                username: ACR_NULL_USER.to_string(),
                password: exchange.refresh_token,
            },
            Duration::from_secs(entra.expires_in.unwrap_or(3600)),
        ))
    }
}
