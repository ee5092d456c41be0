//! Bearer keys: the token's SHA-256 is compared, in constant time, with every configured hash.
//! Extractors check the role before the body is even read.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::config::{KeyConfig, Role};

pub struct Keys {
    keys: Vec<Arc<KeyConfig>>,
}

impl Keys {
    pub fn new(keys: &[KeyConfig]) -> Keys {
        Keys {
            keys: keys.iter().cloned().map(Arc::new).collect(),
        }
    }

    /// The key whose hash matches `token`. Every key is compared, whichever matches, so the
    /// time taken says nothing about which hashes are configured.
    pub fn find(&self, token: &str) -> Option<Arc<KeyConfig>> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for k in &self.keys {
            if bool::from(k.sha256.ct_eq(&digest)) {
                found = Some(Arc::clone(k));
            }
        }
        found
    }
}

/// The key a request presents, if any. A present but unknown or malformed key is refused
/// (401) here, whatever the route.
pub struct Auth(pub Option<Arc<KeyConfig>>);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Ok(Auth(None));
        };
        let token = value.to_str().ok().and_then(bearer).ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be \"Bearer <key>\"")
        })?;
        let key = state
            .keys
            .find(token)
            .ok_or_else(|| ApiError::unauthorized("this key is not known"))?;
        if key.role == Role::Publishable {
            // A key that sits in web pages works only from the pages it was made for.
            let origin = parts
                .headers
                .get(header::ORIGIN)
                .and_then(|o| o.to_str().ok());
            if !origin.is_some_and(|o| key.origins.iter().any(|a| a == o)) {
                return Err(ApiError::forbidden(format!(
                    "publishable key {:?} may not be used from origin {:?}",
                    key.name,
                    origin.unwrap_or("(none)")
                )));
            }
        }
        Ok(Auth(Some(key)))
    }
}

/// The token of `Bearer <token>`. The scheme is case-insensitive and may be followed by
/// several spaces (RFC 9110, section 11.1): `bearer x` is as valid as `Bearer x`.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A role a route requires, as a type: `Need<Site>` in a handler's arguments.
pub trait RoleSpec {
    /// The role named in refusals.
    const ROLE: Role;

    fn allows(role: Role) -> bool {
        role == Self::ROLE
    }
}

/// A site's server, or a page of the site with a publishable key (allocate only).
pub struct SiteOrPage;
impl RoleSpec for SiteOrPage {
    const ROLE: Role = Role::Site;

    fn allows(role: Role) -> bool {
        matches!(role, Role::Site | Role::Publishable)
    }
}

/// A site's server (its tenant's objects) or an admin (its pools').
pub struct SiteOrAdmin;
impl RoleSpec for SiteOrAdmin {
    const ROLE: Role = Role::Site;

    fn allows(role: Role) -> bool {
        matches!(role, Role::Site | Role::Admin)
    }
}

pub struct Site;
impl RoleSpec for Site {
    const ROLE: Role = Role::Site;
}

pub struct Telephony;
impl RoleSpec for Telephony {
    const ROLE: Role = Role::Telephony;
}

pub struct Admin;
impl RoleSpec for Admin {
    const ROLE: Role = Role::Admin;
}

/// A request authenticated with a key of role `R` (401 without a key, 403 with another role).
pub struct Need<R>(pub Arc<KeyConfig>, pub PhantomData<R>);

impl<R: RoleSpec> FromRequestParts<AppState> for Need<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Auth(key) = Auth::from_request_parts(parts, state).await?;
        let key = key.ok_or_else(|| {
            ApiError::unauthorized(format!(
                "this needs a key of role {:?}: send \"Authorization: Bearer <key>\"",
                R::ROLE.as_str()
            ))
        })?;
        if !R::allows(key.role) {
            return Err(ApiError::forbidden(format!(
                "key {:?} has role {:?}; this needs role {:?}",
                key.name,
                key.role.as_str(),
                R::ROLE.as_str()
            )));
        }
        Ok(Need(key, PhantomData))
    }
}

/// Refuses (403) a key not allowed to use `pool`.
pub fn check_pool(key: &KeyConfig, pool: &str) -> Result<(), ApiError> {
    match &key.pools {
        Some(list) if !list.iter().any(|p| p == pool) => Err(ApiError::forbidden(format!(
            "key {:?} may not use pool {pool:?}",
            key.name
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in ["Bearer k", "bearer k", "BEARER k", "bEaReR   k  "] {
            assert_eq!(bearer(v), Some("k"), "{v:?}");
        }
        for v in ["Bearer", "Bearer ", "Basic k", "Bearerk", "Token k", ""] {
            assert_eq!(bearer(v), None, "{v:?}");
        }
    }
}
