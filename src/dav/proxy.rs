//! Which proxy requests go through, and its login: one type for reqwest's connections and
//! for our own (the NTLM transport), so both agree.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use url::Url;

use super::auth::{Credentials, Secret};

/// A proxy and, when it wants one, its login.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub url: Url,
    pub credentials: Option<Credentials>,
}

/// The proxy the standard variables (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`)
/// name for `url`, if any, decided by the same matcher reqwest uses, so our own connections
/// (NTLM) and reqwest's agree. A login in the proxy URL becomes its credentials.
pub fn env_proxy(url: &Url) -> Option<ProxyConfig> {
    let uri: http::Uri = url.as_str().parse().ok()?;
    let intercept = hyper_util::client::proxy::matcher::Matcher::from_env().intercept(&uri)?;
    let mut proxy = Url::parse(&intercept.uri().to_string()).ok()?;
    // An http:// proxy's login comes as a ready `Basic` value: take it apart again.
    let basic = intercept
        .basic_auth()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(u, p)| (u.to_owned(), p.to_owned()))
        });
    let raw = intercept
        .raw_auth()
        .map(|(u, p)| (u.to_owned(), p.to_owned()));
    let credentials = basic.or(raw).map(|(user, password)| Credentials {
        user,
        password: Secret::new(password),
    });
    let _ = proxy.set_username("");
    let _ = proxy.set_password(None);
    Some(ProxyConfig {
        url: proxy,
        credentials,
    })
}
