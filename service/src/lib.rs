//! agent-webhooks service layer.
