//! Channels the server delivers signals through: a Slack- and Discord-compatible incoming
//! webhook over HTTP, and the log (the default).

use std::time::Duration;

use sos_core::{Channel, DeliveryReceipt, Signal};

/// Posts signals to a Slack incoming webhook (Discord accepts the same payload at its `/slack`
/// URL): `{"text": "*<subject>*\n<text>"}`, user text escaped so it is never markup.
///
/// A delivery counts as acknowledged only when the endpoint answered 2xx and identified the
/// message: a JSON body's `ts` or `id`, or Slack's `ok` body with its `x-slack-req-id` header
/// (the signal id stands in when the header is absent, since Slack's incoming webhooks give no
/// message id). Any other 2xx body, and every 4xx, is a rejection; a 5xx, a timeout or a network
/// error is a failure to retry (named shape `false-delivery`).
#[derive(Debug, Clone)]
pub struct SlackChannel {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl SlackChannel {
    /// A channel posting to `url`, with a 10 s timeout per delivery.
    ///
    /// # Errors
    ///
    /// When the HTTP client cannot be built (no TLS backend).
    pub fn new(url: reqwest::Url) -> reqwest::Result<Self> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        Ok(Self { client, url })
    }

    /// The payload posted for `signal`.
    pub fn payload(signal: &Signal) -> serde_json::Value {
        serde_json::json!({
            "text": format!("*{}*\n{}", escape(signal.subject()), escape(signal.text())),
        })
    }
}

/// Escapes the three characters Slack's mrkdwn treats as control characters, so user text is
/// shown as written and never becomes a link or a mention (named shape `format-injection`).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            other => out.push(other),
        }
    }
    out
}

#[async_trait::async_trait]
impl Channel for SlackChannel {
    fn name(&self) -> &str {
        "slack"
    }

    async fn deliver(&self, signal: &Signal) -> DeliveryReceipt {
        let response = match self.client.post(self.url.clone()).json(&Self::payload(signal)).send().await {
            Ok(response) => response,
            Err(error) => return DeliveryReceipt::Failed { reason: format!("the request failed: {error}") },
        };
        let status = response.status();
        let request_id =
            response.headers().get("x-slack-req-id").and_then(|value| value.to_str().ok()).map(str::to_owned);
        let body = match response.text().await {
            Ok(body) => body,
            Err(error) => {
                return DeliveryReceipt::Failed { reason: format!("reading the answer failed: {error}") };
            }
        };
        let short: String = body.chars().take(200).collect();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return DeliveryReceipt::Failed { reason: format!("{status}: {short}") };
        }
        if !status.is_success() {
            return DeliveryReceipt::Rejected { reason: format!("{status}: {short}") };
        }
        if body.trim() == "ok" {
            let message_id = request_id.unwrap_or_else(|| format!("slack-ok:{}", signal.id()));
            return DeliveryReceipt::Acknowledged { message_id };
        }
        let identified = serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|json| {
            ["ts", "id"].iter().find_map(|key| match json.get(key) {
                Some(serde_json::Value::String(text)) if !text.is_empty() => Some(text.clone()),
                Some(serde_json::Value::Number(number)) => Some(number.to_string()),
                _ => None,
            })
        });
        match identified {
            Some(message_id) => DeliveryReceipt::Acknowledged { message_id },
            None => DeliveryReceipt::Rejected {
                reason: format!("{status} without a message id or `ok`: {short}"),
            },
        }
    }
}

/// Writes signals to the server's log (the default channel). The write is the acknowledgement;
/// the message id is `log:<signal id>`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogChannel;

#[async_trait::async_trait]
impl Channel for LogChannel {
    fn name(&self) -> &str {
        "log"
    }

    async fn deliver(&self, signal: &Signal) -> DeliveryReceipt {
        tracing::info!(
            target: "sos_server::signal",
            tenant = %signal.tenant(),
            kind = %signal.kind(),
            id = %signal.id(),
            subject = signal.subject(),
            text = signal.text(),
            "SIGNAL"
        );
        DeliveryReceipt::Acknowledged { message_id: format!("log:{}", signal.id()) }
    }
}
