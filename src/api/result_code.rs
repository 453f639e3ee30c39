//! The push API's result codes (push-semantics.md §6): the number a caller
//! matches on, its name, and the HTTP status we answer with.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultCode {
    SignatureMismatch,
    NeedDeliveryToken,
    NeedAppIdWorkspaceId,
    AppIdWrong,
    DeliveryTypeNotSupported,
    TaskNameNull,
    ExpiredSecondsWrong,
    TokenOrUserIdNull,
    PayloadNotEnough,
    ExpireTimeTooLong,
    InvalidParam,
    SinglePushTargetTooMuch,
    RequestShouldBeUtf8,
    RestApiSwitchNotOpen,
    ExtendParamTooMuch,
    InvalidExtendParam,
    MsgPayloadTooLong,
    DeliveryTokenInvalid,
    AccountNoPermission,
    SystemError,
    StorageFailed,
    StorageFull,
}

impl ResultCode {
    pub fn code(self) -> i32 {
        match self {
            Self::SignatureMismatch => -1,
            Self::NeedDeliveryToken => 3001,
            Self::NeedAppIdWorkspaceId => 3003,
            Self::AppIdWrong => 3007,
            Self::DeliveryTypeNotSupported => 3009,
            Self::TaskNameNull => 3019,
            Self::ExpiredSecondsWrong => 3020,
            Self::TokenOrUserIdNull => 3021,
            Self::PayloadNotEnough => 3024,
            Self::ExpireTimeTooLong => 3026,
            Self::InvalidParam => 3028,
            Self::SinglePushTargetTooMuch => 3029,
            Self::RequestShouldBeUtf8 => 3031,
            Self::RestApiSwitchNotOpen => 3032,
            Self::ExtendParamTooMuch => 3035,
            Self::InvalidExtendParam => 3044,
            Self::MsgPayloadTooLong => 3050,
            Self::DeliveryTokenInvalid => 3054,
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
            Self::TaskNameNull => "TASKNAME_NULL",
            Self::ExpiredSecondsWrong => "EXPIREDSECONDS_WRONG",
            Self::TokenOrUserIdNull => "TOKEN_OR_USERID_NULL",
            Self::PayloadNotEnough => "PAYLOAD_NOT_ENOUGH",
            Self::ExpireTimeTooLong => "EXPIRETIME_TOO_LONG",
            Self::InvalidParam => "INVALID_PARAM",
            Self::SinglePushTargetTooMuch => "SINGLE_PUSH_TARGET_TOO_MUCH",
            Self::RequestShouldBeUtf8 => "REQUEST_SHOULD_BE_UTF8",
            Self::RestApiSwitchNotOpen => "REST_API_SWITCH_NOT_OPEN",
            Self::ExtendParamTooMuch => "EXTEND_PARAM_TOO_MUCH",
            Self::InvalidExtendParam => "INVALID_EXTEND_PARAM",
            Self::MsgPayloadTooLong => "MSG_PAYLOAD_TOO_LONG",
            Self::DeliveryTokenInvalid => "DELIVERYTOKEN_INVALID",
            Self::AccountNoPermission => "ACCOUNT_NO_PERMISSION",
            Self::SystemError => "SYSTEM_ERROR",
            Self::StorageFailed => "STORAGE_FAILED",
            Self::StorageFull => "STORAGE_FULL",
        }
    }

    /// User errors are 4xx; only our own failures are 5xx.
    pub fn http_status(self) -> u16 {
        match self {
            Self::SignatureMismatch => 401,
            Self::AppIdWrong | Self::RestApiSwitchNotOpen | Self::AccountNoPermission => 403,
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
}

impl ApiError {
    pub fn new(code: ResultCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}
