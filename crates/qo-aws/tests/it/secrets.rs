//! The API key sources against moto: plain, Secrets Manager, SSM SecureString.

use crate::common;

use aws_sdk_ssm::types::ParameterType;
use qo_aws::{KeySource, load_api_key};
use qo_core::config::map_env as env;

#[tokio::test]
async fn api_key_from_each_source_in_order() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    aws_sdk_secretsmanager::Client::new(&config)
        .create_secret()
        .name("api-key")
        .secret_string("from-secrets-manager\n")
        .send()
        .await
        .unwrap();
    aws_sdk_ssm::Client::new(&config)
        .put_parameter()
        .name("/qo/api-key")
        .value("from-ssm")
        .r#type(ParameterType::SecureString)
        .send()
        .await
        .unwrap();

    assert!(load_api_key(&env(&[]), &config).await.unwrap().is_none());

    let k = load_api_key(&env(&[("API_KEY_PARAMETER", "/qo/api-key")]), &config)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(k.expose(), "from-ssm", "SecureString decrypted");
    assert_eq!(k.source(), &KeySource::Parameter("/qo/api-key".into()));

    let both = env(&[
        ("API_KEY_SECRET_ID", "api-key"),
        ("API_KEY_PARAMETER", "/qo/api-key"),
    ]);
    let k = load_api_key(&both, &config).await.unwrap().unwrap();
    assert_eq!(
        k.expose(),
        "from-secrets-manager",
        "Secrets Manager first, trimmed"
    );
    assert_eq!(format!("{k}"), "***");

    let all = env(&[
        ("API_KEY", "plain"),
        ("API_KEY_SECRET_ID", "api-key"),
        ("API_KEY_PARAMETER", "/qo/api-key"),
    ]);
    let k = load_api_key(&all, &config).await.unwrap().unwrap();
    assert_eq!(k.expose(), "plain");
    assert_eq!(k.source(), &KeySource::Plain);

    let e = load_api_key(&env(&[("API_KEY_SECRET_ID", "missing")]), &config)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("secretsmanager.GetSecretValue"),
        "{e}"
    );
    assert!(e.to_string().contains("ResourceNotFoundException"), "{e}");
}

#[tokio::test]
async fn load_config_defaults_the_region_for_an_emulator() {
    let Some((moto, _)) = common::moto().await else {
        return;
    };
    let config = qo_aws::load_config(&common::settings(), Some(&moto.endpoint)).await;
    assert!(config.region().is_some());
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        assert_eq!(config.region().map(|r| r.as_ref()), Some("us-east-1"));
    }
    assert_eq!(config.endpoint_url(), Some(moto.endpoint.as_str()));
    let t = config.timeout_config().unwrap();
    assert_eq!(
        t.connect_timeout(),
        Some(common::settings().connect_timeout)
    );
    assert_eq!(t.read_timeout(), Some(common::settings().read_timeout));
    assert_eq!(config.retry_config().unwrap().max_attempts(), 2);
}
