//! Pure values of webhook security, with no database: the accepted signing-secret forms, secrets
//! sealed at rest under rotating keys, Standard Webhooks signatures and Ed25519 keys.

pub mod ed25519;
pub mod secret_box;
pub mod signing;
pub mod webhook_secret;
