//! Run-time switches and tunables (`system_config`): list, and update one key
//! with typed validation. A change reaches every running copy within a second.

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};

use super::auth::{OperatorAuth, ViewerAuth};
use super::error::{ApiError, ApiResult};
use super::{ApiTags, AppState};
use crate::audit_log::Audit;
use crate::monitor::{validate_setting, Setting, SettingError, SettingKind, SETTINGS};

pub struct SystemApi;

/// The type of a setting's value.
#[derive(Enum, Clone, Copy)]
#[oai(rename_all = "lowercase")]
pub enum SettingType {
    Boolean,
    Integer,
}

/// One setting.
#[derive(Object)]
pub struct SystemSetting {
    pub key: String,
    /// The value in effect, as text: the stored one, else the default.
    pub value: String,
    /// The value when none is stored.
    pub default: String,
    #[oai(rename = "type")]
    pub kind: SettingType,
    pub description: String,
    /// Smallest allowed value (integers only).
    #[oai(skip_serializing_if_is_none)]
    pub minimum: Option<u64>,
    /// Largest allowed value (integers only).
    #[oai(skip_serializing_if_is_none)]
    pub maximum: Option<u64>,
}

/// A new value for a setting.
#[derive(Object)]
pub struct SettingValue {
    /// `true`/`false` for booleans, a whole number for integers.
    #[oai(validator(max_length = 100))]
    pub value: String,
}

/// Stores a setting checked against the catalogue; a bad value is named as
/// the request's `field`.
pub(crate) async fn store(
    state: &AppState,
    key: &str,
    value: &str,
    field: &str,
) -> ApiResult<SystemSetting> {
    let value = validate_setting(key, value).map_err(|e| match e {
        SettingError::UnknownKey(_) => {
            ApiError::not_found(format!("{e}; known settings: {}", known()))
        }
        SettingError::Invalid(detail) => ApiError::invalid(field, format!("{field}: {detail}")),
    })?;
    let client = state.pool.get().await?;
    client
        .execute(
            "INSERT INTO system_config (config_key, config_value) VALUES ($1, $2)
             ON CONFLICT (config_key) DO UPDATE SET config_value = $2, updated_at = now()",
            &[&key, &value],
        )
        .await?;
    Ok(describe(key, value))
}

fn known() -> String {
    SETTINGS
        .iter()
        .map(|s| s.key)
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(key: &str, value: String) -> SystemSetting {
    let setting = SETTINGS.iter().find(|s| s.key == key).expect("a known key");
    let (kind, minimum, maximum) = match setting.kind {
        SettingKind::Boolean => (SettingType::Boolean, None, None),
        SettingKind::Integer { min, max } => (SettingType::Integer, Some(min), Some(max)),
    };
    SystemSetting {
        key: key.to_owned(),
        value,
        kind,
        description: setting.description.to_owned(),
        default: setting.default.to_owned(),
        minimum,
        maximum,
    }
}

/// How each system-setting operation is audited.
pub(super) const AUDIT: &[Audit] = &[
    Audit::new("system_list", "查询系统配置"),
    Audit::new("system_update", "修改系统配置").record_result(),
];

#[OpenApi(tag = "ApiTags::System")]
impl SystemApi {
    /// List every setting with its value, type and meaning
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(
        path = "/api/config/system",
        method = "get",
        operation_id = "system_list"
    )]
    async fn list(
        &self,
        _auth: ViewerAuth,
        state: Data<&AppState>,
    ) -> ApiResult<Json<Vec<SystemSetting>>> {
        let client = state.pool.get().await?;
        let rows = client
            .query("SELECT config_key, config_value FROM system_config", &[])
            .await?;
        let in_effect = |setting: &Setting| {
            rows.iter()
                .find(|r| r.get::<_, &str>(0) == setting.key)
                .map(|r| r.get::<_, String>(1))
                .filter(|v| validate_setting(setting.key, v).is_ok())
                .unwrap_or_else(|| setting.default.to_owned())
        };
        Ok(Json(
            SETTINGS
                .iter()
                .map(|s| describe(s.key, in_effect(s)))
                .collect(),
        ))
    }

    /// Change one setting (takes effect on every running copy)
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/system/:key",
        method = "put",
        operation_id = "system_update"
    )]
    async fn update(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        key: Path<String>,
        body: Json<SettingValue>,
    ) -> ApiResult<Json<SystemSetting>> {
        let held = state.worker.hold_reloads().await;
        let stored = store(&state, &key.0, &body.value, "value").await?;
        // This copy applies it before answering (and its own notification
        // finds it applied); the others within moments.
        state.worker.reload_holding(held).await?;
        Ok(Json(stored))
    }
}
