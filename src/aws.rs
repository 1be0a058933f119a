//! What the AWS clients (SQS for messages, KMS for keyrings) share: how an endpoint override
//! is judged, so both pick credentials the same way.

/// Placeholder credentials for a local emulator: `Some` when `endpoint_url` names one (see
/// [`is_local_emulator`]) and the environment gives no credentials (`AWS_ACCESS_KEY_ID` or
/// `AWS_PROFILE`), so a developer needs no AWS setup; `None` everywhere else, where the default
/// credential chain applies.
pub fn emulator_credentials(
    endpoint_url: Option<&str>,
) -> Option<aws_credential_types::Credentials> {
    let has_env_creds = std::env::var_os("AWS_ACCESS_KEY_ID").is_some()
        || std::env::var_os("AWS_PROFILE").is_some();
    (!has_env_creds && endpoint_url.is_some_and(is_local_emulator)).then(|| {
        aws_credential_types::Credentials::new("test", "test", None, None, "local-endpoint")
    })
}

/// Whether an endpoint URL names a local emulator: a loopback address, `localhost` (or a name
/// under it, like LocalStack's `*.localhost.localstack.cloud`), or the compose host `localstack`.
pub fn is_local_emulator(endpoint_url: &str) -> bool {
    let rest = endpoint_url
        .split_once("://")
        .map_or(endpoint_url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    let host = host.to_ascii_lowercase();
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    host == "localhost"
        || host == "localstack"
        || host.ends_with(".localhost")
        || host.contains(".localhost.")
}
