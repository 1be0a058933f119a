//! What the AWS clients (SQS for messages, KMS for keyrings) share: how an endpoint override
//! is judged, so both pick credentials the same way.

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
