//! Table and column identifiers shared by the migrations.

use sea_orm_migration::prelude::*;

#[derive(DeriveIden, Clone, Copy)]
pub enum Organizations {
    Table,
    Id,
    Name,
    CreatedAt,
    UpdatedAt,
    IsDeleted,
}

#[derive(DeriveIden, Clone, Copy)]
pub enum Agents {
    Table,
    Id,
    OrganizationId,
    Name,
    Description,
    CreatedAt,
    UpdatedAt,
    IsDeleted,
    WebhookUrl,
    WebhookSecret,
    WebhookEvents,
    WebhookEnabled,
    WebhookFailingSince,
    WebhookDisabledAt,
    WebhookDisabledReason,
    #[sea_orm(iden = "webhook_ed25519_secret_key")]
    WebhookEd25519SecretKey,
    #[sea_orm(iden = "webhook_ed25519_public_key")]
    WebhookEd25519PublicKey,
    WebhookFilter,
    WebhookOrdered,
}

#[derive(DeriveIden, Clone, Copy)]
pub enum WebhookDeliveries {
    Table,
    Id,
    OrganizationId,
    AgentId,
    EventId,
    EventType,
    WebhookUrl,
    StatusCode,
    ErrorMessage,
    AttemptCount,
    CreatedAt,
    DeliveredAt,
    NextRetryAt,
    Payload,
    Lane,
    LaneSeq,
}

#[derive(DeriveIden, Clone, Copy)]
pub enum WebhookDeliveryAttempts {
    Table,
    Id,
    DeliveryId,
    Attempt,
    StartedAt,
    FinishedAt,
    StatusCode,
    ErrorClass,
    Message,
    ResponseBodyPrefix,
    RemoteAddr,
}

#[derive(DeriveIden, Clone, Copy)]
pub enum WebhookPreviousSecrets {
    Table,
    Id,
    AgentId,
    KeyId,
    SealedSecret,
    ExpiresAt,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
pub enum WebhookLanes {
    Table,
    AgentId,
    Lane,
    LastSeq,
}
