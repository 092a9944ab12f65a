//! Compaction for Responses clients (Codex), whatever the provider speaks.
//!
//! Codex compacts a long session in one of two ways: a `/v1/responses` request whose
//! `input` ends in a `compaction_trigger` item, answered with one `compaction` item,
//! or `POST /v1/responses/compact`, answered with the new history (the user's messages
//! and a `compaction` item). Later requests carry the item back in `input`, and only
//! whoever made it can read it.
//!
//! A provider that speaks Responses gets the trigger as sent and makes the item
//! itself. For any other provider sandgate compacts: it asks the routed model for a
//! summary (a model call like any other: routed, budgeted, recorded), seals the
//! summary into the item's `encrypted_content` with a key only sandgate holds
//! (ChaCha20-Poly1305, `sgc1.` + base64 of nonce and ciphertext), and when the item
//! comes back, opens it into a user message carrying the summary, for whichever
//! provider the next call reaches. Replicas (and restarts) open each other's items
//! when they share `SANDGATE_SEAL_SECRET`; without it each process has a random key.

use base64::Engine as _;
use bytes::Bytes;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use serde_json::{json, Value};
use sha2::Digest as _;

use super::{Answer, Call, CallContext, Format, Gateway, ModelError, ProviderKind, Requested};

/// What sealed compaction content starts with.
const SEALED: &str = "sgc1.";

/// What sandgate asks the model for when it compacts.
const INSTRUCTION: &str = "Compact this conversation so it can continue in a fresh context. Write a concise summary \
of everything needed to carry on: the user's goals and instructions, decisions made, files and code touched, tool \
results that matter, and what remains to be done. Answer with the summary only.";

/// How an opened summary goes back into a conversation.
const OPENED: &str = "Summary of the conversation so far (compacted):\n\n";

/// Seals and opens compaction summaries.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").finish_non_exhaustive()
    }
}

impl Sealer {
    /// The key from `SANDGATE_SEAL_SECRET` (at least 16 bytes), else a random one.
    pub fn from_env() -> Self {
        let secret = match std::env::var("SANDGATE_SEAL_SECRET") {
            Ok(secret) if secret.len() >= 16 => secret.into_bytes(),
            _ => {
                let mut secret = vec![0u8; 32];
                getrandom::fill(&mut secret).expect("the OS random source is available");
                secret
            }
        };
        Self::new(&secret)
    }

    fn new(secret: &[u8]) -> Self {
        let key = sha2::Sha256::new().chain_update(b"sandgate compaction seal\0").chain_update(secret).finalize();
        let key = UnboundKey::new(&CHACHA20_POLY1305, &key).expect("a 32-byte key");
        Self { key: LessSafeKey::new(key) }
    }

    pub fn seal(&self, summary: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random source is available");
        let mut sealed = summary.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut sealed)
            .expect("sealing cannot fail for a message this size");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{SEALED}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
    }

    /// The summary in `content`; `None` when it is not sandgate's or does not open
    /// with this key.
    pub fn open(&self, content: &str) -> Option<String> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(content.strip_prefix(SEALED)?).ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let opened = self.key.open_in_place(nonce, Aad::empty(), &mut sealed).ok()?;
        String::from_utf8(opened.to_vec()).ok()
    }
}

/// Whether a Responses item is a compaction item sandgate sealed.
fn sealed_item(item: &Value) -> Option<&str> {
    (item["type"] == "compaction")
        .then(|| item["encrypted_content"].as_str())
        .flatten()
        .filter(|content| content.starts_with(SEALED))
}

fn user_message(text: String) -> Value {
    json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
}

impl Gateway {
    /// Opens the compaction items sandgate sealed in a Responses request's `input`
    /// into user messages with their summaries. An item that does not open (sealed
    /// by a sandgate with another key) is refused, naming the setting.
    pub(super) fn open_compactions(&self, body: &mut Value) -> Result<(), ModelError> {
        let Some(items) = body.get_mut("input").and_then(Value::as_array_mut) else { return Ok(()) };
        for item in items.iter_mut() {
            if let Some(content) = sealed_item(item) {
                let summary = self.sealer.open(content).ok_or_else(|| {
                    ModelError::Invalid(
                        "a compaction item in `input` was sealed by another sandgate: replicas must share \
                         SANDGATE_SEAL_SECRET, and it must survive restarts"
                            .into(),
                    )
                })?;
                *item = user_message(format!("{OPENED}{summary}"));
            }
        }
        Ok(())
    }

    /// Whether a Responses request asks for compaction (its `input` ends in a
    /// `compaction_trigger` item) and its model's provider cannot do it, so sandgate
    /// must.
    pub(super) fn compacts_here(&self, ctx: &CallContext, call: &Call) -> bool {
        let trigger = call.body["input"].as_array().and_then(|items| items.last()).map(|item| &item["type"]);
        if call.format != Format::Responses || trigger != Some(&json!("compaction_trigger")) {
            return false;
        }
        // The model the call names, else the first of the tier it names, else (`auto`)
        // the first of the cheapest tier the caller may use: its provider decides.
        let first = |tier: &super::Tier| tier.models.first().and_then(|name| self.catalog.models.get(name));
        let model = match Requested::parse(&call.model) {
            Requested::Model(name) => self.catalog.models.get(&name),
            Requested::Tier(name) => self.catalog.tiers.iter().find(|tier| tier.name == name).and_then(first),
            Requested::Auto => {
                self.catalog.tiers.iter().filter(|tier| ctx.capabilities.tier(&tier.name).allowed).find_map(first)
            }
        };
        model.is_none_or(|model| self.catalog.provider_of(model).kind != ProviderKind::Responses)
    }

    /// Compacts a Responses request whose provider cannot: asks the model for a
    /// summary, and answers as a Responses provider would, with one sealed
    /// `compaction` item (streamed when the request streams).
    pub(super) async fn compact_here(&self, ctx: CallContext, call: Call) -> Result<Answer, ModelError> {
        let mut body = call.body.clone();
        if let Some(items) = body["input"].as_array_mut() {
            items.pop();
            items.push(user_message(INSTRUCTION.to_string()));
        }
        body["stream"] = Value::Bool(false);
        if let Some(fields) = body.as_object_mut() {
            // Nothing to call while summarising.
            for field in ["tools", "tool_choice", "parallel_tool_calls", "text"] {
                fields.remove(field);
            }
        }
        let summary_call = Call { stream: false, body, ..call.clone() };
        let (summary, usage, routed) = match self.route(ctx, summary_call).await? {
            Answer::Whole { status, body, routed, .. } if (200..300).contains(&status) => {
                let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let reply = super::wire::responses::read_reply(&value);
                (reply.text(), value["usage"].clone(), routed)
            }
            answer => return Ok(answer),
        };
        let item = json!({
            "type": "compaction",
            "id": format!("cmp_{}", uuid::Uuid::now_v7().simple()),
            "encrypted_content": self.sealer.seal(&summary),
        });
        let response = json!({
            "id": format!("resp_{}", uuid::Uuid::now_v7().simple()),
            "object": "response",
            "created_at": super::now_ms() / 1000,
            "status": "completed",
            "model": routed.model,
            "output": [item],
            "usage": usage,
        });
        if !call.stream {
            let body = Bytes::from(response.to_string());
            return Ok(Answer::Whole { status: 200, content_type: Some("application/json".into()), body, routed });
        }
        let mut started = response.clone();
        started["status"] = json!("in_progress");
        started["output"] = json!([]);
        let events = [
            ("response.created", json!({"type": "response.created", "sequence_number": 0, "response": started})),
            (
                "response.in_progress",
                json!({"type": "response.in_progress", "sequence_number": 1, "response": started}),
            ),
            (
                "response.output_item.added",
                json!({"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
                    "item": {"type": "compaction", "id": item["id"]}}),
            ),
            (
                "response.output_item.done",
                json!({"type": "response.output_item.done", "sequence_number": 3, "output_index": 0, "item": item}),
            ),
            ("response.completed", json!({"type": "response.completed", "sequence_number": 4, "response": response})),
        ];
        let text: String = events.iter().map(|(name, data)| format!("event: {name}\ndata: {data}\n\n")).collect();
        let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(text)) });
        Ok(Answer::Stream {
            status: 200,
            content_type: Some("text/event-stream".into()),
            body: Box::pin(stream),
            routed,
        })
    }

    /// `POST /v1/responses/compact` (`{model, instructions, input}`): the trigger form
    /// sent through the usual route, answered as the endpoint answers: the input's
    /// user messages and the compaction item, as the new history. A provider that
    /// answered the trigger with text instead of an item has that text sealed.
    pub async fn compact(self: &std::sync::Arc<Self>, ctx: CallContext, mut call: Call) -> Result<Answer, ModelError> {
        let input = match call.body.get("input") {
            Some(Value::String(text)) => vec![user_message(text.clone())],
            Some(Value::Array(items)) => items.clone(),
            _ => return Err(ModelError::Invalid("`input` must be a string or an array of items".into())),
        };
        let kept: Vec<Value> = input
            .iter()
            .filter(|item| item["role"] == "user" && item.get("type").is_none_or(|t| t == "message"))
            .cloned()
            .collect();
        let mut items = input;
        items.push(json!({"type": "compaction_trigger"}));
        call.body["input"] = Value::Array(items);
        call.body["stream"] = Value::Bool(false);
        call.body["store"] = Value::Bool(false);
        call.stream = false;
        call.format = Format::Responses;
        let answer = self.call(ctx, call).await?;
        let Answer::Whole { status, body, routed, content_type } = answer else {
            return Err(ModelError::Unavailable("the compaction answer streamed".into()));
        };
        if !(200..300).contains(&status) {
            return Ok(Answer::Whole { status, body, routed, content_type });
        }
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let outputs = value["output"].as_array().cloned().unwrap_or_default();
        let item = match outputs.iter().find(|item| item["type"] == "compaction") {
            Some(item) => item.clone(),
            None => {
                let text = super::wire::responses::read_reply(&value).text();
                json!({"type": "compaction", "id": format!("cmp_{}", uuid::Uuid::now_v7().simple()),
                    "encrypted_content": self.sealer.seal(&text)})
            }
        };
        let mut output = kept;
        output.push(item);
        let compacted = json!({
            "id": value["id"].as_str().map_or_else(|| format!("resp_{}", uuid::Uuid::now_v7().simple()), str::to_string),
            "object": "response.compaction",
            "created_at": super::now_ms() / 1000,
            "output": output,
            "usage": value["usage"],
        });
        let body = Bytes::from(compacted.to_string());
        Ok(Answer::Whole { status: 200, content_type: Some("application/json".into()), body, routed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_summaries_open_only_with_the_same_key() {
        let sealer = Sealer::new(b"a secret of sixteen bytes or more");
        let sealed = sealer.seal("the user wants a parser; tests pass");
        assert!(sealed.starts_with(SEALED));
        assert!(!sealed.contains("parser"), "the content is not readable");
        assert_eq!(sealer.open(&sealed).as_deref(), Some("the user wants a parser; tests pass"));
        assert_ne!(sealer.seal("same"), sealer.seal("same"), "a fresh nonce each time");
        let other = Sealer::new(b"another secret of sixteen bytes");
        assert_eq!(other.open(&sealed), None);
        let mut tampered = sealed.clone();
        tampered.push('A');
        assert_eq!(sealer.open(&tampered), None);
        assert_eq!(sealer.open("gAAAAABprovider-made"), None);
    }
}
