//! The OS keyring: `davdrive login URL` stores a user name and password for a URL there,
//! `davdrive logout URL` removes them, and a mount of that URL finds them.
//!
//! Stores: on Linux the desktop's Secret Service (GNOME Keyring, KWallet) when a D-Bus session
//! is running, else the kernel's keyutils *user* keyring, shared by all sessions of the user
//! (in memory: gone after a reboot, so a login-time auto-mount needs a `davdrive login` per
//! boot or a secrets file; `DAVDRIVE_KEYRING=keyutils|secret-service` forces one); the
//! Keychain on macOS; the Credential Manager on Windows.
//!
//! One entry per URL (service `davdrive`, account = the URL without userinfo). The secret is
//! `user NEWLINE password`, so a mount needs nothing but the URL.

use url::Url;

use crate::dav::client::redact_url;
use crate::dav::{Credentials, Secret};

const SERVICE: &str = "davdrive";

/// Where this process keeps secrets.
enum Store {
    /// The `keyring` crate's default store for this OS (Secret Service on Linux).
    Keyring,
    /// The kernel's user keyring (Linux without a Secret Service).
    #[cfg(target_os = "linux")]
    Keyutils,
}

fn store_kind() -> Store {
    #[cfg(target_os = "linux")]
    {
        let dbus = std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|v| !v.is_empty());
        match std::env::var("DAVDRIVE_KEYRING").ok().as_deref() {
            Some("keyutils") => Store::Keyutils,
            Some("secret-service") => Store::Keyring,
            _ if dbus => Store::Keyring,
            _ => Store::Keyutils,
        }
    }
    #[cfg(not(target_os = "linux"))]
    Store::Keyring
}

/// The kernel keyring, through keyutils: one `user` key per URL in the user keyring.
#[cfg(target_os = "linux")]
mod keyutils {
    use linux_keyutils::{KeyError, KeyRing, KeyRingIdentifier};

    fn ring() -> Result<KeyRing, String> {
        KeyRing::from_special_id(KeyRingIdentifier::User, true)
            .map_err(|e| format!("kernel keyring: {e:?}"))
    }

    pub fn set(desc: &str, secret: &str) -> Result<(), String> {
        ring()?
            .add_key(desc, secret.as_bytes())
            .map(drop)
            .map_err(|e| format!("kernel keyring: {e:?}"))
    }

    pub fn get(desc: &str) -> Result<Option<String>, String> {
        let key = match ring()?.search(desc) {
            Ok(k) => k,
            Err(KeyError::KeyDoesNotExist | KeyError::KeyExpired | KeyError::KeyRevoked) => {
                return Ok(None);
            }
            Err(e) => return Err(format!("kernel keyring: {e:?}")),
        };
        let bytes = key
            .read_to_vec()
            .map_err(|e| format!("kernel keyring: {e:?}"))?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| "kernel keyring: the entry is not text".into())
    }

    pub fn remove(desc: &str) -> Result<bool, String> {
        match ring()?.search(desc) {
            Ok(k) => k
                .invalidate()
                .map(|()| true)
                .map_err(|e| format!("kernel keyring: {e:?}")),
            Err(KeyError::KeyDoesNotExist | KeyError::KeyExpired | KeyError::KeyRevoked) => {
                Ok(false)
            }
            Err(e) => Err(format!("kernel keyring: {e:?}")),
        }
    }
}

fn account(url: &Url) -> String {
    let s = redact_url(url);
    s.trim_end_matches('/').to_owned()
}

fn entry(url: &Url) -> Result<keyring::Entry, String> {
    keyring::Entry::new(SERVICE, &account(url)).map_err(|e| format!("OS keyring: {e}"))
}

/// Stores `creds` for `url`, replacing what was there.
// Elsewhere than on Linux there is no kernel keyring to fall back to.
#[cfg_attr(not(target_os = "linux"), allow(clippy::let_and_return))]
pub fn store(url: &Url, creds: &Credentials) -> Result<(), String> {
    if creds.user.contains('\n') {
        return Err("a user name cannot contain a line break".into());
    }
    let secret = format!("{}\n{}", creds.user, creds.password.expose());
    let stored = match store_kind() {
        #[cfg(target_os = "linux")]
        Store::Keyutils => keyutils::set(&key_name(url), &secret),
        Store::Keyring => {
            let r = entry(url).and_then(|e| e.set_password(&secret).map_err(|e| e.to_string()));
            // A D-Bus session without a Secret Service (SSH logins): the kernel keyring.
            #[cfg(target_os = "linux")]
            let r = r.or_else(|e| {
                tracing::info!("no Secret Service ({e}); using the kernel keyring");
                keyutils::set(&key_name(url), &secret)
            });
            r
        }
    };
    stored.map_err(|e| format!("cannot store the password in the OS keyring: {e}"))
}

/// What the keyring holds for `url`; `Ok(None)` when nothing (or no keyring is reachable:
/// the other sources may still have credentials).
// Elsewhere than on Linux there is no kernel keyring to fall back to.
#[cfg_attr(not(target_os = "linux"), allow(clippy::let_and_return))]
pub fn find(url: &Url) -> Result<Option<Credentials>, String> {
    let secret = match store_kind() {
        #[cfg(target_os = "linux")]
        Store::Keyutils => keyutils::get(&key_name(url)),
        Store::Keyring => {
            let r = entry(url).and_then(|e| match e.get_password() {
                Ok(s) => Ok(Some(s)),
                Err(keyring::Error::NoEntry) => Ok(None),
                Err(e) => Err(e.to_string()),
            });
            // `login` falls back to the kernel keyring when the Secret Service is missing.
            #[cfg(target_os = "linux")]
            let r = match r {
                Ok(Some(s)) => Ok(Some(s)),
                _ => keyutils::get(&key_name(url)),
            };
            r
        }
    };
    let secret = match secret {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(None),
        Err(e) => {
            // No reachable keyring is not an error: other sources may have credentials.
            tracing::debug!("OS keyring unavailable: {e}");
            return Ok(None);
        }
    };
    let Some((user, password)) = secret.split_once('\n') else {
        return Err(format!(
            "the OS keyring entry for {} is not davdrive's; run `davdrive login` again",
            account(url)
        ));
    };
    Ok(Some(Credentials {
        user: user.to_owned(),
        password: Secret::new(password),
    }))
}

/// Removes what the keyring holds for `url`. `Ok(false)`: there was nothing.
// Elsewhere than on Linux there is no kernel keyring to fall back to.
#[cfg_attr(not(target_os = "linux"), allow(clippy::let_and_return))]
pub fn remove(url: &Url) -> Result<bool, String> {
    let removed = match store_kind() {
        #[cfg(target_os = "linux")]
        Store::Keyutils => keyutils::remove(&key_name(url)),
        Store::Keyring => {
            let r = entry(url).and_then(|e| match e.delete_credential() {
                Ok(()) => Ok(true),
                Err(keyring::Error::NoEntry) => Ok(false),
                Err(e) => Err(e.to_string()),
            });
            #[cfg(target_os = "linux")]
            let r = match r {
                Ok(true) => Ok(true),
                _ => keyutils::remove(&key_name(url)),
            };
            r
        }
    };
    removed.map_err(|e| format!("cannot remove the OS keyring entry: {e}"))
}

/// The keyutils description of a URL's entry.
#[cfg(target_os = "linux")]
fn key_name(url: &Url) -> String {
    format!("{SERVICE}:{}", account(url))
}

/// `davdrive login` on Windows: Credential Manager, for real under Wine.
#[cfg(all(test, windows))]
mod windows_tests {
    use super::*;

    #[test]
    fn credential_manager_stores_finds_and_removes() {
        let url = Url::parse("https://wine-test.invalid/dav/").expect("url");
        let _ = remove(&url);
        let creds = Credentials {
            user: "HOSPITAL\\rad1".into(),
            password: Secret::new("correct horse"),
        };
        store(&url, &creds).expect("store");
        let got = find(&url).expect("find").expect("stored");
        assert_eq!(got.user, "HOSPITAL\\rad1");
        assert_eq!(got.password.expose(), "correct horse");
        assert!(remove(&url).expect("remove"));
        assert!(find(&url).expect("find").is_none());
        assert!(!remove(&url).expect("remove again"));
    }
}
