//! The event body the app hands over, checked and kept as bytes.

/// An event's JSON body as the app hands it to [`enqueue`](super::enqueue): what the receiver gets.
#[derive(Clone, Copy, Debug)]
pub struct Payload<'a>(PayloadSource<'a>);

#[derive(Clone, Copy, Debug)]
pub(super) enum PayloadSource<'a> {
    Json(&'a [u8]),
    Value(&'a serde_json::Value),
}

impl<'a> Payload<'a> {
    /// JSON text, stored and sent byte for byte (key order, duplicates, number spelling);
    /// refused unless it is one JSON value in UTF-8.
    pub fn json(text: &'a [u8]) -> Payload<'a> {
        Payload(PayloadSource::Json(text))
    }

    /// The bytes to store: the app's own, checked, or `serde_json`'s compact writing of a
    /// value; refused beyond `max` bytes.
    pub(super) fn bytes(self, max: usize) -> Result<Vec<u8>, PayloadError> {
        let bytes = match self.0 {
            PayloadSource::Json(text) => {
                if text.len() <= max {
                    let text = std::str::from_utf8(text).map_err(|e| {
                        PayloadError::NotJson(serde::de::Error::custom(format_args!(
                            "not UTF-8 at byte {}",
                            e.valid_up_to()
                        )))
                    })?;
                    serde_json::from_str::<serde::de::IgnoredAny>(text)
                        .map_err(PayloadError::NotJson)?;
                }
                text.to_vec()
            }
            PayloadSource::Value(value) => {
                serde_json::to_vec(value).map_err(PayloadError::NotJson)?
            }
        };
        if bytes.len() > max {
            return Err(PayloadError::TooLarge {
                size: bytes.len(),
                max,
            });
        }
        Ok(bytes)
    }
}

impl<'a> From<&'a serde_json::Value> for Payload<'a> {
    fn from(value: &'a serde_json::Value) -> Self {
        Payload(PayloadSource::Value(value))
    }
}

impl<'a> From<&'a serde_json::value::RawValue> for Payload<'a> {
    fn from(raw: &'a serde_json::value::RawValue) -> Self {
        Payload::json(raw.get().as_bytes())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is {size} bytes, more than the {max}-byte limit (WEBHOOK_MAX_PAYLOAD_BYTES)")]
    TooLarge { size: usize, max: usize },
    /// The text is not one JSON value in UTF-8, or the value cannot be written as JSON.
    #[error("payload is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
}
