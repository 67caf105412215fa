//! App JWTs: what a GitHub App signs to prove it is the app (RS256, `iat` backdated 60 s,
//! `exp` under GitHub's 10-minute limit), reused until a minute before it expires.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::config::AppSettings;

/// How far `iat` is backdated, for clocks that run behind GitHub's.
const BACKDATE: Duration = Duration::from_secs(60);
/// Lifetime from `iat`; GitHub refuses `exp` more than 10 minutes ahead.
const LIFETIME: Duration = Duration::from_secs(9 * 60);
/// A JWT is replaced this long before its `exp`.
const REUSE_MARGIN: Duration = Duration::from_secs(60);

#[derive(Serialize)]
struct Claims<'a> {
    iat: u64,
    exp: u64,
    iss: &'a str,
}

/// Signs app JWTs for one app. The key never leaves this struct, and `Debug` shows no secret.
pub struct AppSigner {
    /// The app's configured name.
    pub name: String,
    issuer: String,
    key: EncodingKey,
    cached: Mutex<Option<(Arc<str>, SystemTime)>>,
}

impl fmt::Debug for AppSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSigner").field("name", &self.name).field("issuer", &self.issuer).finish()
    }
}

impl AppSigner {
    /// Loads the app's private key from its file or environment variable and checks that it
    /// signs. Errors name the app and say what is wrong; nothing here panics on a bad key.
    pub fn from_settings(app: &AppSettings) -> Result<AppSigner, String> {
        let pem = match (&app.private_key_path, &app.private_key_env) {
            (Some(path), _) => std::fs::read(path).map_err(|e| {
                format!("app {:?}: cannot read private key file {}: {e}", app.name, path.display())
            })?,
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| format!("app {:?}: environment variable {var} is not set", app.name))?
                .into_bytes(),
            (None, None) => return Err(format!("app {:?} has no private key", app.name)),
        };
        let key = EncodingKey::from_rsa_pem(&pem).map_err(|e| {
            format!(
                "app {:?}: the private key is not an RSA key in PEM form (PKCS#1 or PKCS#8): {e}",
                app.name
            )
        })?;
        let issuer = app.app_id.clone().or_else(|| app.client_id.clone()).unwrap_or_default();
        let signer = AppSigner { name: app.name.clone(), issuer, key, cached: Mutex::new(None) };
        signer
            .sign(SystemTime::now())
            .map_err(|e| format!("app {:?}: the private key cannot sign: {e}", app.name))?;
        Ok(signer)
    }

    /// The current JWT, signing a new one when the cached one is within a minute of expiry.
    pub fn jwt(&self) -> Result<Arc<str>, String> {
        let now = SystemTime::now();
        let mut cached = self.cached.lock().expect("jwt cache poisoned");
        if let Some((jwt, exp)) = cached.as_ref() {
            if now + REUSE_MARGIN < *exp {
                return Ok(Arc::clone(jwt));
            }
        }
        let (jwt, exp) = self.sign(now)?;
        *cached = Some((Arc::clone(&jwt), exp));
        Ok(jwt)
    }

    fn sign(&self, now: SystemTime) -> Result<(Arc<str>, SystemTime), String> {
        let iat = now - BACKDATE;
        let exp = iat + LIFETIME;
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = Claims { iat: secs(iat), exp: secs(exp), iss: &self.issuer };
        let jwt = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|e| e.to_string())?;
        Ok((Arc::from(jwt), exp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};
    use std::path::PathBuf;

    fn data(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
    }

    fn app(path: PathBuf) -> AppSettings {
        AppSettings {
            name: "ci-bot".into(),
            app_id: Some("4242".into()),
            client_id: None,
            private_key_path: Some(path),
            private_key_env: None,
        }
    }

    #[derive(serde::Deserialize)]
    struct Decoded {
        iat: u64,
        exp: u64,
        iss: String,
    }

    #[test]
    fn signs_rs256_with_pkcs1_and_pkcs8_keys_and_github_limits() {
        let public = std::fs::read(data("app-key-public.pem")).unwrap();
        for file in ["app-key-pkcs1.pem", "app-key-pkcs8.pem"] {
            let signer = AppSigner::from_settings(&app(data(file))).unwrap();
            let jwt = signer.jwt().unwrap();
            let mut v = Validation::new(Algorithm::RS256);
            v.set_required_spec_claims(&["exp", "iat", "iss"]);
            let claims = jsonwebtoken::decode::<Decoded>(
                jwt.as_bytes(),
                &DecodingKey::from_rsa_pem(&public).unwrap(),
                &v,
            )
            .unwrap()
            .claims;
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
            assert_eq!(claims.iss, "4242");
            assert!(claims.iat <= now - 59 && claims.iat >= now - 61, "iat backdated 60 s");
            assert!(claims.exp <= now + 600, "exp within GitHub's 10 minutes");
            assert_eq!(signer.jwt().unwrap(), jwt, "reused while valid");
        }
    }

    #[test]
    fn bad_keys_fail_with_the_app_name_and_no_panic() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("bad.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN RSA PRIVATE KEY-----\nbm90IGEga2V5\n-----END RSA PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = AppSigner::from_settings(&app(garbage)).unwrap_err();
        assert!(err.contains("ci-bot"), "{err}");
        let err = AppSigner::from_settings(&app(dir.path().join("missing.pem"))).unwrap_err();
        assert!(err.contains("cannot read") && err.contains("ci-bot"), "{err}");
        let mut by_env = app(PathBuf::new());
        by_env.private_key_path = None;
        by_env.private_key_env = Some("GHGATE_TEST_SURELY_UNSET_KEY".into());
        assert!(AppSigner::from_settings(&by_env).unwrap_err().contains("GHGATE_TEST_SURELY_UNSET_KEY"));
    }
}
