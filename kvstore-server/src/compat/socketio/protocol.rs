//! Socket.IO v5 packets, carried in Engine.IO messages (framing in the module
//! comment of [`super`]).

use serde_json::Value;

/// The default namespace, the only one served.
pub const DEFAULT_NAMESPACE: &str = "/";

/// A packet from the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// `0`: join `namespace`, with the `auth` object if one was given.
    Connect {
        /// The namespace.
        namespace: String,
        /// The client's `auth` payload.
        auth: Option<Value>,
    },
    /// `1`: leave `namespace`.
    Disconnect {
        /// The namespace.
        namespace: String,
    },
    /// An event, an acknowledgement or a binary one: nothing here listens to them.
    Other,
}

/// A packet that is not Socket.IO v5.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Socket.IO packet: {0}")]
pub struct Malformed(pub String);

impl Packet {
    /// Decodes `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`.
    pub fn decode(text: &str) -> Result<Packet, Malformed> {
        let bad = |why: &str| Malformed(format!("{why} in {text:.40?}"));
        let mut rest = text;
        let kind = take_digits(&mut rest, 1).ok_or_else(|| bad("no packet type"))?;
        if matches!(kind, 5 | 6) {
            take_digits(&mut rest, 10).ok_or_else(|| bad("no attachment count"))?;
            rest = rest
                .strip_prefix('-')
                .ok_or_else(|| bad("no '-' after the attachment count"))?;
        }
        let namespace = match rest.strip_prefix('/') {
            Some(_) => {
                let (namespace, after) = rest.split_once(',').unwrap_or((rest, ""));
                rest = after;
                namespace.to_string()
            }
            None => DEFAULT_NAMESPACE.to_string(),
        };
        if matches!(kind, 2 | 3 | 5 | 6) {
            // An optional acknowledgement id.
            take_digits(&mut rest, 19);
        }
        let data = if rest.is_empty() {
            None
        } else {
            Some(serde_json::from_str::<Value>(rest).map_err(|_| bad("bad JSON"))?)
        };
        match (kind, data) {
            (0, None) => Ok(Packet::Connect {
                namespace,
                auth: None,
            }),
            (0, Some(auth)) if auth.is_object() => Ok(Packet::Connect {
                namespace,
                auth: Some(auth),
            }),
            (1, None) => Ok(Packet::Disconnect { namespace }),
            (2 | 5, Some(Value::Array(args))) if args.first().is_some_and(Value::is_string) => {
                Ok(Packet::Other)
            }
            (3 | 6, Some(Value::Array(_))) => Ok(Packet::Other),
            _ => Err(bad("an unexpected packet")),
        }
    }
}

/// Takes up to `max` leading ASCII digits off `text` as a number (`None` if none).
fn take_digits(text: &mut &str, max: usize) -> Option<u64> {
    let len = text
        .bytes()
        .take(max)
        .take_while(u8::is_ascii_digit)
        .count();
    let number = text.get(..len)?.parse().ok()?;
    *text = &text[len..];
    Some(number)
}

/// The server's packets, as Socket.IO text (to be wrapped in an Engine.IO message).
pub mod out {
    use serde_json::{json, Value};

    /// `0{"sid": ...}`: the client joined the default namespace.
    pub fn connected(sid: &str) -> String {
        format!("0{}", json!({ "sid": sid }))
    }

    /// `4[<namespace>,]{"message": ..., "data": ...}`: the client may not join.
    pub fn connect_error(namespace: &str, message: &str, data: Option<Value>) -> String {
        let mut body = json!({ "message": message });
        if let Some(data) = data {
            body["data"] = data;
        }
        format!("4{}{body}", prefix(namespace))
    }

    /// `2["<name>",<data>]`: an event in the default namespace, `data` given as
    /// JSON text (so that its keys keep the order they were written in).
    pub fn event(name: &str, data: &str) -> String {
        format!("2[{},{data}]", Value::from(name))
    }

    fn prefix(namespace: &str) -> String {
        if namespace == super::DEFAULT_NAMESPACE {
            String::new()
        } else {
            format!("{namespace},")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn connects_carry_a_namespace_and_an_auth_object() {
        assert_eq!(
            Packet::decode("0"),
            Ok(Packet::Connect {
                namespace: "/".into(),
                auth: None
            })
        );
        assert_eq!(
            Packet::decode(r#"0{"token":"t"}"#),
            Ok(Packet::Connect {
                namespace: "/".into(),
                auth: Some(json!({"token": "t"}))
            })
        );
        assert_eq!(
            Packet::decode("0/admin,"),
            Ok(Packet::Connect {
                namespace: "/admin".into(),
                auth: None
            })
        );
        assert_eq!(
            Packet::decode("1"),
            Ok(Packet::Disconnect {
                namespace: "/".into()
            })
        );
    }

    #[test]
    fn events_and_acks_are_recognised_and_garbage_is_not() {
        for other in [
            r#"2["hello",1]"#,
            r#"2/admin,12["x"]"#,
            r#"31[]"#,
            r#"51-["up",{"_placeholder":true,"num":0}]"#,
        ] {
            assert_eq!(Packet::decode(other), Ok(Packet::Other), "{other}");
        }
        for garbage in [
            "", "x", "7", "0[1]", "0{", "2", "2[]", "2[1]", "4{}", "5[\"x\"]", "1{}",
        ] {
            assert!(Packet::decode(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn server_packets() {
        assert_eq!(out::connected("s1"), r#"0{"sid":"s1"}"#);
        assert_eq!(out::connect_error("/", "no", None), r#"4{"message":"no"}"#);
        assert_eq!(
            out::connect_error("/admin", "Invalid namespace", None),
            r#"4/admin,{"message":"Invalid namespace"}"#
        );
        assert_eq!(
            out::event("key_update", r#"{"data":"a \"b\""}"#),
            r#"2["key_update",{"data":"a \"b\""}]"#
        );
    }
}
