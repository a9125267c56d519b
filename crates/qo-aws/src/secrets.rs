//! The API key the worker sends: from `API_KEY` (plain, for local use), else from Secrets
//! Manager (`API_KEY_SECRET_ID`), else from an SSM SecureString parameter
//! (`API_KEY_PARAMETER`). The key is held in an [`ApiKey`], which never prints itself.

use aws_config::SdkConfig;
use qo_core::config::Env;
pub use qo_core::secret::{ApiKey, KeySource};

use crate::error::AwsError;

/// Loads the API key: `API_KEY`, else `API_KEY_SECRET_ID` (Secrets Manager `SecretString`),
/// else `API_KEY_PARAMETER` (SSM, decrypted). `None` when none is set (an API without a key).
/// Surrounding whitespace (a trailing newline in a pasted secret) is trimmed.
pub async fn load_api_key(
    env: &impl Env,
    sdk_config: &SdkConfig,
) -> Result<Option<ApiKey>, AwsError> {
    if let Some(key) = env.get("API_KEY") {
        return Ok(Some(ApiKey::new(key.trim(), KeySource::Plain)));
    }
    if let Some(id) = env.get("API_KEY_SECRET_ID") {
        const OP: &str = "secretsmanager.GetSecretValue";
        let out = aws_sdk_secretsmanager::Client::new(sdk_config)
            .get_secret_value()
            .secret_id(&id)
            .send()
            .await
            .map_err(|e| AwsError::sdk(OP, e))?;
        let key = out
            .secret_string()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                AwsError::invalid(
                    OP,
                    format!("API_KEY_SECRET_ID={id:?}: the secret has no SecretString"),
                )
            })?;
        return Ok(Some(ApiKey::new(key, KeySource::Secret(id))));
    }
    if let Some(name) = env.get("API_KEY_PARAMETER") {
        const OP: &str = "ssm.GetParameter";
        let out = aws_sdk_ssm::Client::new(sdk_config)
            .get_parameter()
            .name(&name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| AwsError::sdk(OP, e))?;
        let key = out
            .parameter()
            .and_then(|p| p.value())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                AwsError::invalid(
                    OP,
                    format!("API_KEY_PARAMETER={name:?}: the parameter has no value"),
                )
            })?;
        return Ok(Some(ApiKey::new(key, KeySource::Parameter(name))));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_itself() {
        let k = ApiKey::new("s3cr3t", KeySource::Parameter("/api/key".into()));
        assert_eq!(format!("{k}"), "***");
        assert_eq!(
            format!("{k:?}"),
            "ApiKey(***, from Parameter(\"/api/key\"))"
        );
        assert!(!format!("{:?}", Some(k.clone())).contains("s3cr3t"));
        assert_eq!(k.expose(), "s3cr3t");
    }
}
