//! The push API's result codes (push-semantics.md §6): the number a caller
//! matches on, its name, and the HTTP status we answer with. Variants are in
//! code order; `ALL` lists them so a test keeps it that way.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultCode {
    SignatureMismatch,
    NeedDeliveryToken,
    NeedAppIdWorkspaceId,
    AppIdWrong,
    DeliveryTypeNotSupported,
    NeedUserId,
    TaskNameNull,
    ExpiredSecondsWrong,
    TokenOrUserIdNull,
    TemplateNotExist,
    TemplateKvNotEnough,
    PayloadNotEnough,
    NeedTemplate,
    ExpireTimeTooLong,
    InvalidParam,
    SinglePushTargetTooMuch,
    BroadcastOnlySupportByDevice,
    RequestShouldBeUtf8,
    RestApiSwitchNotOpen,
    ExtendParamTooMuch,
    TemplateAlreadyExist,
    TemplateNameNull,
    TemplateNameInvalid,
    TemplateContentInvalid,
    TemplateTitleInvalid,
    TemplateDescInfoInvalid,
    TemplateUriInvalid,
    SinglePushContentTooLong,
    InvalidExtendParam,
    MultipleInnerExtendParamTooMuch,
    MsgPayloadTooLong,
    DeliveryTokenInvalid,
    MultipleTargetNumberTooMuch,
    TemplateNumTooMuch,
    TagAlreadyExist,
    TagNotExist,
    TagNumTooMuch,
    ApiRateLimited,
    RequestTimeout,
    AccountNoPermission,
    SystemError,
    StorageFailed,
    StorageFull,
}

impl ResultCode {
    /// Every code, in the enum's (and the numbers') order.
    pub const ALL: [ResultCode; 43] = [
        Self::SignatureMismatch,
        Self::NeedDeliveryToken,
        Self::NeedAppIdWorkspaceId,
        Self::AppIdWrong,
        Self::DeliveryTypeNotSupported,
        Self::NeedUserId,
        Self::TaskNameNull,
        Self::ExpiredSecondsWrong,
        Self::TokenOrUserIdNull,
        Self::TemplateNotExist,
        Self::TemplateKvNotEnough,
        Self::PayloadNotEnough,
        Self::NeedTemplate,
        Self::ExpireTimeTooLong,
        Self::InvalidParam,
        Self::SinglePushTargetTooMuch,
        Self::BroadcastOnlySupportByDevice,
        Self::RequestShouldBeUtf8,
        Self::RestApiSwitchNotOpen,
        Self::ExtendParamTooMuch,
        Self::TemplateAlreadyExist,
        Self::TemplateNameNull,
        Self::TemplateNameInvalid,
        Self::TemplateContentInvalid,
        Self::TemplateTitleInvalid,
        Self::TemplateDescInfoInvalid,
        Self::TemplateUriInvalid,
        Self::SinglePushContentTooLong,
        Self::InvalidExtendParam,
        Self::MultipleInnerExtendParamTooMuch,
        Self::MsgPayloadTooLong,
        Self::DeliveryTokenInvalid,
        Self::MultipleTargetNumberTooMuch,
        Self::TemplateNumTooMuch,
        Self::TagAlreadyExist,
        Self::TagNotExist,
        Self::TagNumTooMuch,
        Self::ApiRateLimited,
        Self::RequestTimeout,
        Self::AccountNoPermission,
        Self::SystemError,
        Self::StorageFailed,
        Self::StorageFull,
    ];

    pub fn code(self) -> i32 {
        match self {
            Self::SignatureMismatch => -1,
            Self::NeedDeliveryToken => 3001,
            Self::NeedAppIdWorkspaceId => 3003,
            Self::AppIdWrong => 3007,
            Self::DeliveryTypeNotSupported => 3009,
            Self::NeedUserId => 3012,
            Self::TaskNameNull => 3019,
            Self::ExpiredSecondsWrong => 3020,
            Self::TokenOrUserIdNull => 3021,
            Self::TemplateNotExist => 3022,
            Self::TemplateKvNotEnough => 3023,
            Self::PayloadNotEnough => 3024,
            Self::NeedTemplate => 3025,
            Self::ExpireTimeTooLong => 3026,
            Self::InvalidParam => 3028,
            Self::SinglePushTargetTooMuch => 3029,
            Self::BroadcastOnlySupportByDevice => 3030,
            Self::RequestShouldBeUtf8 => 3031,
            Self::RestApiSwitchNotOpen => 3032,
            Self::ExtendParamTooMuch => 3035,
            Self::TemplateAlreadyExist => 3036,
            Self::TemplateNameNull => 3037,
            Self::TemplateNameInvalid => 3038,
            Self::TemplateContentInvalid => 3039,
            Self::TemplateTitleInvalid => 3040,
            Self::TemplateDescInfoInvalid => 3041,
            Self::TemplateUriInvalid => 3042,
            Self::SinglePushContentTooLong => 3043,
            Self::InvalidExtendParam => 3044,
            Self::MultipleInnerExtendParamTooMuch => 3049,
            Self::MsgPayloadTooLong => 3050,
            Self::DeliveryTokenInvalid => 3054,
            Self::MultipleTargetNumberTooMuch => 3055,
            Self::TemplateNumTooMuch => 3056,
            // Ours: the reference's tags live in its console, which has no
            // codes; these mirror the template ones (3036, 3022, 3056).
            Self::TagAlreadyExist => 3101,
            Self::TagNotExist => 3102,
            Self::TagNumTooMuch => 3103,
            // Ours: the app sent more than its apiRatePerSec (HTTP 429 with
            // Retry-After); 39xx is free in the reference's table.
            Self::ApiRateLimited => 3901,
            // Ours: the body did not arrive within http.body_timeout_ms.
            Self::RequestTimeout => 3902,
            Self::AccountNoPermission => 8014,
            Self::SystemError => 9000,
            Self::StorageFailed => 9001,
            Self::StorageFull => 9002,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::SignatureMismatch => "SIGNATURE_MISMATCH",
            Self::NeedDeliveryToken => "NEED_DELIVERYTOKEN",
            Self::NeedAppIdWorkspaceId => "NEED_APPID_WORKSPACEID",
            Self::AppIdWrong => "APPID_WRONG",
            Self::DeliveryTypeNotSupported => "DELIVERY_TYPE_NOT_SUPPORTED",
            Self::NeedUserId => "NEED_USERID",
            Self::TaskNameNull => "TASKNAME_NULL",
            Self::ExpiredSecondsWrong => "EXPIREDSECONDS_WRONG",
            Self::TokenOrUserIdNull => "TOKEN_OR_USERID_NULL",
            Self::TemplateNotExist => "TEMPLATE_NOT_EXIST",
            Self::TemplateKvNotEnough => "TEMPLATEKV_NOT_ENOUGH",
            Self::PayloadNotEnough => "PAYLOAD_NOT_ENOUGH",
            Self::NeedTemplate => "NEED_TEMPLATE",
            Self::ExpireTimeTooLong => "EXPIRETIME_TOO_LONG",
            Self::InvalidParam => "INVALID_PARAM",
            Self::SinglePushTargetTooMuch => "SINGLE_PUSH_TARGET_TOO_MUCH",
            Self::BroadcastOnlySupportByDevice => "BROADCAST_ONLY_SUPPORT_BY_DEVICE",
            Self::RequestShouldBeUtf8 => "REQUEST_SHOULD_BE_UTF8",
            Self::RestApiSwitchNotOpen => "REST_API_SWITCH_NOT_OPEN",
            Self::ExtendParamTooMuch => "EXTEND_PARAM_TOO_MUCH",
            Self::TemplateAlreadyExist => "TEMPLATE_ALREADY_EXIST",
            Self::TemplateNameNull => "TEMPLATE_NAME_NULL",
            Self::TemplateNameInvalid => "TEMPLATE_NAME_INVALID",
            Self::TemplateContentInvalid => "TEMPLATE_CONTENT_INVALID",
            Self::TemplateTitleInvalid => "TEMPLATE_TITLE_INVALID",
            Self::TemplateDescInfoInvalid => "TEMPLATE_DESC_INFO_INVALID",
            Self::TemplateUriInvalid => "TEMPLATE_URI_INVALID",
            Self::SinglePushContentTooLong => "SINGLE_PUSH_CONTENT_TOO_LONG",
            Self::InvalidExtendParam => "INVALID_EXTEND_PARAM",
            Self::MultipleInnerExtendParamTooMuch => "MULTIPLE_INNER_EXTEND_PARAM_TOO_MUCH",
            Self::MsgPayloadTooLong => "MSG_PAYLOAD_TOO_LONG",
            Self::DeliveryTokenInvalid => "DELIVERYTOKEN_INVALID",
            Self::MultipleTargetNumberTooMuch => "MULTIPLE_TARGET_NUMBER_TOO_MUCH",
            Self::TemplateNumTooMuch => "TEMPLATE_NUM_TOO_MUCH",
            Self::TagAlreadyExist => "TAG_ALREADY_EXIST",
            Self::TagNotExist => "TAG_NOT_EXIST",
            Self::TagNumTooMuch => "TAG_NUM_TOO_MUCH",
            Self::ApiRateLimited => "API_RATE_LIMITED",
            Self::RequestTimeout => "REQUEST_TIMEOUT",
            Self::AccountNoPermission => "ACCOUNT_NO_PERMISSION",
            Self::SystemError => "SYSTEM_ERROR",
            Self::StorageFailed => "STORAGE_FAILED",
            Self::StorageFull => "STORAGE_FULL",
        }
    }

    /// User errors are 4xx; only our own failures are 5xx. A missing
    /// template or tag is 404 wherever it is named (an endpoint's path or a
    /// push's `templateName` or `tagName`); a change that conflicts with the
    /// app's templates or tags (the name is taken, or the app is at its
    /// limit) is 409.
    pub fn http_status(self) -> u16 {
        match self {
            Self::SignatureMismatch => 401,
            Self::AppIdWrong | Self::RestApiSwitchNotOpen | Self::AccountNoPermission => 403,
            Self::TemplateNotExist | Self::TagNotExist => 404,
            Self::TemplateAlreadyExist
            | Self::TemplateNumTooMuch
            | Self::TagAlreadyExist
            | Self::TagNumTooMuch => 409,
            Self::RequestTimeout => 408,
            Self::ApiRateLimited => 429,
            Self::SystemError | Self::StorageFailed => 503,
            Self::StorageFull => 507,
            _ => 400,
        }
    }
}

/// A refused request: the code and a reason a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ResultCode,
    pub reason: String,
    /// Overrides the code's HTTP status (413 for an oversized body).
    http_status: Option<u16>,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(code: ResultCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            http_status: None,
            retry_after_secs: None,
        }
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn with_http_status(mut self, status: u16) -> Self {
        self.http_status = Some(status);
        self
    }

    pub fn http_status(&self) -> u16 {
        self.http_status.unwrap_or_else(|| self.code.http_status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_listed_in_order_with_unique_names() {
        let codes: Vec<i32> = ResultCode::ALL.iter().map(|c| c.code()).collect();
        assert!(codes.windows(2).all(|w| w[0] < w[1]), "{codes:?}");
        let names: std::collections::HashSet<&str> = ResultCode::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), ResultCode::ALL.len());
    }

    #[test]
    fn user_errors_are_4xx() {
        for code in ResultCode::ALL {
            let status = code.http_status();
            let ours = matches!(
                code,
                ResultCode::SystemError | ResultCode::StorageFailed | ResultCode::StorageFull
            );
            assert_eq!(ours, status >= 500, "{code:?} -> {status}");
        }
    }
}
