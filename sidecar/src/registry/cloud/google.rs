//! Google Artifact Registry and GCR: an access token from the metadata server
//! (Workload Identity).

use std::time::Duration;

use super::{CloudError, CloudLogin, OAuthToken};
use crate::registry::credentials::Credential;

impl CloudLogin {
    pub(super) async fn google(&self) -> Result<(Credential, Duration), CloudError> {
        let host = self
            .env
            .get("GCE_METADATA_HOST")
            .unwrap_or("metadata.google.internal");
        let body = self
            .send(
                self.http
                    .get(format!(
                        "http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
                    ))
                    .header("metadata-flavor", "Google"),
                "the GCE metadata server",
            )
            .await
            .map_err(|e| {
                CloudError::NoIdentity(format!("no Google identity (Workload Identity): {e}"))
            })?;
        let token: OAuthToken = serde_json::from_str(&body).map_err(|e| {
            CloudError::bad(
                "the GCE metadata server",
                format!("token does not parse: {e}"),
            )
        })?;
        Ok((
            Credential {
                username: "oauth2accesstoken".to_string(),
                password: token.access_token,
            },
            Duration::from_secs(token.expires_in.unwrap_or(300)),
        ))
    }
}
