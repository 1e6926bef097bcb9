//! The proto3 JSON mapping of `RouteRequest` and `RouteResponse`, for `POST /v1/route`
//! (DESIGN contract 6). Written out by hand for just these messages rather than generated
//! for the whole proto crate: it is four small messages, and the conversions destructure
//! every message completely, so a field added to the `.proto` fails to compile here
//! instead of silently missing from the JSON.
//!
//! The mapping: lowerCamelCase names (the proto names are accepted too), 64-bit integers
//! written as strings and read from numbers or strings, `null` read as the default,
//! unknown fields refused. Answers carry every field, defaults included, so a client
//! never needs to guess.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use switchyard_proto::v1::{
    ClientPolicy, Explanation, Failure, RouteRequest, RouteResponse, RoutedGateway,
};

/// `RouteRequest` as JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RouteRequestJson {
    /// Who asks: drives the sticky first place.
    #[serde(
        rename = "clientId",
        alias = "client_id",
        deserialize_with = "nullable"
    )]
    client_id: String,
    /// The caller's region; empty lets the router map the caller's IP.
    #[serde(deserialize_with = "nullable")]
    region: String,
    /// The caller's zone; empty like `region`.
    #[serde(deserialize_with = "nullable")]
    zone: String,
    /// `tcp` or `ws`: which address each gateway is listed with.
    #[serde(deserialize_with = "nullable")]
    protocol: String,
    /// The device's network, selecting a client policy.
    #[serde(deserialize_with = "nullable")]
    network: String,
    /// How many gateways to return (0 = the default).
    #[serde(deserialize_with = "integer")]
    limit: u32,
    /// Gateway ids the client must not get back.
    #[serde(deserialize_with = "nullable")]
    exclude: Vec<String>,
    /// Gateways the client just failed to reach, for outlier ejection.
    #[serde(deserialize_with = "nullable")]
    failures: Vec<FailureJson>,
    /// Ask for the reasoning behind the answer.
    #[serde(deserialize_with = "nullable")]
    explain: bool,
    /// A preview that changes no state.
    #[serde(rename = "dryRun", alias = "dry_run", deserialize_with = "nullable")]
    dry_run: bool,
}

/// `Failure` as JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FailureJson {
    /// The gateway the client could not reach.
    #[serde(
        rename = "gatewayId",
        alias = "gateway_id",
        deserialize_with = "nullable"
    )]
    gateway_id: String,
    /// What went wrong, free text.
    #[serde(deserialize_with = "nullable")]
    reason: String,
    /// When, Unix milliseconds (0 = now); int64, so a string or a number.
    #[serde(
        rename = "atUnixMs",
        alias = "at_unix_ms",
        deserialize_with = "integer"
    )]
    at_unix_ms: i64,
}

/// A `RouteRequest` from a JSON body. Messages must be JSON objects: serde's derive would
/// also take an array of field values, which the mapping does not allow, so the shape
/// is checked on the parsed value first.
pub(crate) fn parse_request(bytes: &[u8]) -> Result<RouteRequest, serde_json::Error> {
    use serde::de::Error as _;
    let value: serde_json::Value = serde_json::from_slice(bytes)?;
    let failures_are_objects = value
        .get("failures")
        .and_then(serde_json::Value::as_array)
        .is_none_or(|list| list.iter().all(serde_json::Value::is_object));
    if !value.is_object() || !failures_are_objects {
        return Err(serde_json::Error::custom(
            "invalid type: a RouteRequest and each of its failures must be JSON objects",
        ));
    }
    serde_json::from_value::<RouteRequestJson>(value).map(RouteRequest::from)
}

impl From<RouteRequestJson> for RouteRequest {
    fn from(j: RouteRequestJson) -> Self {
        let RouteRequestJson {
            client_id,
            region,
            zone,
            protocol,
            network,
            limit,
            exclude,
            failures,
            explain,
            dry_run,
        } = j;
        RouteRequest {
            client_id,
            region,
            zone,
            protocol,
            network,
            limit,
            exclude,
            failures: failures
                .into_iter()
                .map(|f| {
                    let FailureJson {
                        gateway_id,
                        reason,
                        at_unix_ms,
                    } = f;
                    Failure {
                        gateway_id,
                        reason,
                        at_unix_ms,
                    }
                })
                .collect(),
            explain,
            dry_run,
        }
    }
}

/// `RouteResponse` as JSON.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RouteResponseJson {
    /// Best first.
    gateways: Vec<RoutedGatewayJson>,
    /// Registry revision (int64, so a string).
    revision: String,
    /// How long the list may be cached (uint64, so a string).
    valid_for_ms: String,
    /// How the client should behave; `null` only if a router ever sends none.
    policy: Option<ClientPolicyJson>,
    /// Filled when the request asked to `explain`.
    explanation: Vec<ExplanationJson>,
    /// Age of the registry view (uint64, so a string).
    snapshot_age_ms: String,
    /// Login ticket for HELLO (proto3 JSON omits an empty string).
    #[serde(skip_serializing_if = "String::is_empty")]
    ticket: String,
    /// Ticket validity from now (uint64, so a string).
    ticket_valid_for_ms: String,
}

/// `RoutedGateway` as JSON.
#[derive(Debug, Serialize)]
struct RoutedGatewayJson {
    /// Gateway id.
    id: String,
    /// Address for the requested protocol.
    address: String,
    /// Its region.
    region: String,
    /// Its zone.
    zone: String,
    /// Higher is better, within one answer.
    score: Double,
}

/// `ClientPolicy` as JSON.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ClientPolicyJson {
    /// uint64 as a string, like every `*_ms` here.
    heartbeat_interval_ms: String,
    /// Dead-link timeout after a PING.
    heartbeat_timeout_ms: String,
    /// First reconnect backoff.
    backoff_base_ms: String,
    /// Backoff cap.
    backoff_cap_ms: String,
    /// uint32: a plain number.
    max_attempts: u32,
    /// Random delay before the first reconnect.
    reconnect_spread_ms: String,
}

/// `Explanation` as JSON.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ExplanationJson {
    /// The gateway explained.
    gateway_id: String,
    /// Locality tier it was ranked in.
    tier: String,
    /// 1-based rank, 0 when not returned.
    rank: u32,
    /// Its score.
    score: Double,
    /// Why it was placed or passed over.
    reason: String,
}

impl From<RouteResponse> for RouteResponseJson {
    fn from(r: RouteResponse) -> Self {
        let RouteResponse {
            gateways,
            revision,
            valid_for_ms,
            policy,
            explanation,
            snapshot_age_ms,
            ticket,
            ticket_valid_for_ms,
        } = r;
        Self {
            gateways: gateways
                .into_iter()
                .map(|g| {
                    let RoutedGateway {
                        id,
                        address,
                        region,
                        zone,
                        score,
                    } = g;
                    RoutedGatewayJson {
                        id,
                        address,
                        region,
                        zone,
                        score: Double(score),
                    }
                })
                .collect(),
            revision: revision.to_string(),
            valid_for_ms: valid_for_ms.to_string(),
            policy: policy.map(|p| {
                let ClientPolicy {
                    heartbeat_interval_ms,
                    heartbeat_timeout_ms,
                    backoff_base_ms,
                    backoff_cap_ms,
                    max_attempts,
                    reconnect_spread_ms,
                } = p;
                ClientPolicyJson {
                    heartbeat_interval_ms: heartbeat_interval_ms.to_string(),
                    heartbeat_timeout_ms: heartbeat_timeout_ms.to_string(),
                    backoff_base_ms: backoff_base_ms.to_string(),
                    backoff_cap_ms: backoff_cap_ms.to_string(),
                    max_attempts,
                    reconnect_spread_ms: reconnect_spread_ms.to_string(),
                }
            }),
            explanation: explanation
                .into_iter()
                .map(|e| {
                    let Explanation {
                        gateway_id,
                        tier,
                        rank,
                        score,
                        reason,
                    } = e;
                    ExplanationJson {
                        gateway_id,
                        tier,
                        rank,
                        score: Double(score),
                        reason,
                    }
                })
                .collect(),
            snapshot_age_ms: snapshot_age_ms.to_string(),
            ticket,
            ticket_valid_for_ms: ticket_valid_for_ms.to_string(),
        }
    }
}

/// A proto `double`: a JSON number, or `"NaN"`, `"Infinity"`, `"-Infinity"`, which JSON
/// numbers cannot express (serde_json would write `null`, which reads back as 0).
#[derive(Debug, Clone, Copy)]
struct Double(f64);

impl Serialize for Double {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            v if v.is_finite() => s.serialize_f64(v),
            v if v.is_nan() => s.serialize_str("NaN"),
            v if v > 0.0 => s.serialize_str("Infinity"),
            _ => s.serialize_str("-Infinity"),
        }
    }
}

/// A field whose JSON `null` means its default, as the mapping requires.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An integer field: a JSON number (an integral one, also written with an exponent) or a
/// decimal string, since 64-bit values travel as strings; `null` is 0.
fn integer<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64> + FromStr + Default,
{
    d.deserialize_any(Integer(PhantomData))
}

/// The visitor behind [`integer`].
struct Integer<T>(PhantomData<T>);

impl<T> Integer<T>
where
    T: TryFrom<i64> + TryFrom<u64>,
{
    fn fit<E: de::Error, V: Copy + fmt::Display>(v: V) -> Result<T, E>
    where
        T: TryFrom<V>,
    {
        T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
    }
}

impl<'de, T> Visitor<'de> for Integer<T>
where
    T: TryFrom<i64> + TryFrom<u64> + FromStr + Default,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer, as a number or a string")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        Self::fit(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Self::fit(v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        // 2^63: every integral f64 below it in magnitude converts to i64 exactly.
        const LIMIT: f64 = 9_223_372_036_854_775_808.0;
        if v.fract() != 0.0 || !(-LIMIT..LIMIT).contains(&v) {
            return Err(E::custom(format!("{v} is not an integer in range")));
        }
        Self::fit(v as i64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse()
            .map_err(|_| E::custom(format!("{v:?} is not an integer in range")))
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: serde_json::Value) -> Result<RouteRequest, String> {
        parse_request(v.to_string().as_bytes()).map_err(|e| e.to_string())
    }

    fn full_request() -> RouteRequest {
        RouteRequest {
            client_id: "user-1".into(),
            region: "cn-east".into(),
            zone: "sh-a".into(),
            protocol: "ws".into(),
            network: "cellular".into(),
            limit: 5,
            exclude: vec!["gw-1".into(), "gw-2".into()],
            failures: vec![Failure {
                gateway_id: "gw-3".into(),
                reason: "connect refused".into(),
                at_unix_ms: 1_764_000_000_123,
            }],
            explain: true,
            dry_run: true,
        }
    }

    #[test]
    fn every_request_field_reads_by_its_json_name_and_its_proto_name() {
        let camel = json!({
            "clientId": "user-1", "region": "cn-east", "zone": "sh-a", "protocol": "ws",
            "network": "cellular", "limit": 5, "exclude": ["gw-1", "gw-2"],
            "failures": [{"gatewayId": "gw-3", "reason": "connect refused", "atUnixMs": "1764000000123"}],
            "explain": true, "dryRun": true,
        });
        assert_eq!(parse(camel).unwrap(), full_request());
        let snake = json!({
            "client_id": "user-1", "region": "cn-east", "zone": "sh-a", "protocol": "ws",
            "network": "cellular", "limit": "5", "exclude": ["gw-1", "gw-2"],
            "failures": [{"gateway_id": "gw-3", "reason": "connect refused", "at_unix_ms": 1764000000123_i64}],
            "explain": true, "dry_run": true,
        });
        assert_eq!(parse(snake).unwrap(), full_request());
    }

    #[test]
    fn absent_and_null_fields_are_defaults() {
        assert_eq!(parse(json!({})).unwrap(), RouteRequest::default());
        let nulls = json!({
            "clientId": null, "region": null, "zone": null, "protocol": null, "network": null,
            "limit": null, "exclude": null, "failures": [{"atUnixMs": null}], "explain": null,
            "dryRun": null,
        });
        let want = RouteRequest {
            failures: vec![Failure::default()],
            ..RouteRequest::default()
        };
        assert_eq!(parse(nulls).unwrap(), want);
        assert_eq!(parse(json!({"limit": 3e0})).unwrap().limit, 3);
    }

    #[test]
    fn bad_values_and_unknown_fields_are_refused_with_a_reason() {
        for (bad, says) in [
            (json!({"clientID": "x"}), "unknown field `clientID`"),
            (json!({"limit": -1}), "-1 is out of range"),
            (json!({"limit": 4294967296_u64}), "out of range"),
            (json!({"limit": 2.5}), "not an integer"),
            (json!({"limit": "three"}), "\"three\" is not an integer"),
            (
                json!({"limit": true}),
                "an integer, as a number or a string",
            ),
            (json!({"clientId": 7}), "invalid type"),
            (json!({"exclude": "gw-1"}), "invalid type"),
            (
                json!({"clientId": "a", "client_id": "b"}),
                "duplicate field",
            ),
            (json!([]), "invalid type"),
            (
                json!({"failures": [["gw-1", "refused", 0]]}),
                "invalid type",
            ),
            (json!({"failures": [null]}), "invalid type"),
        ] {
            let err = parse(bad.clone()).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn every_response_field_is_written_with_64_bit_integers_as_strings() {
        let resp = RouteResponse {
            gateways: vec![RoutedGateway {
                id: "gw-1".into(),
                address: "ws://203.0.113.5:7202/ws".into(),
                region: "cn-east".into(),
                zone: "sh-a".into(),
                score: 0.5,
            }],
            revision: 42,
            valid_for_ms: 30_000,
            policy: Some(ClientPolicy {
                heartbeat_interval_ms: 30_000,
                heartbeat_timeout_ms: 10_000,
                backoff_base_ms: 500,
                backoff_cap_ms: 30_000,
                max_attempts: 7,
                reconnect_spread_ms: 1_000,
            }),
            explanation: vec![Explanation {
                gateway_id: "gw-1".into(),
                tier: "zone".into(),
                rank: 1,
                score: f64::INFINITY,
                reason: "sticky".into(),
            }],
            snapshot_age_ms: u64::MAX,
            ticket: "eyJ.e30.sig".into(),
            ticket_valid_for_ms: 60_000,
        };
        let got = serde_json::to_value(RouteResponseJson::from(resp)).unwrap();
        let want = json!({
            "gateways": [{"id": "gw-1", "address": "ws://203.0.113.5:7202/ws",
                          "region": "cn-east", "zone": "sh-a", "score": 0.5}],
            "revision": "42",
            "validForMs": "30000",
            "policy": {"heartbeatIntervalMs": "30000", "heartbeatTimeoutMs": "10000",
                       "backoffBaseMs": "500", "backoffCapMs": "30000", "maxAttempts": 7,
                       "reconnectSpreadMs": "1000"},
            "explanation": [{"gatewayId": "gw-1", "tier": "zone", "rank": 1,
                             "score": "Infinity", "reason": "sticky"}],
            "snapshotAgeMs": "18446744073709551615",
            "ticket": "eyJ.e30.sig",
            "ticketValidForMs": "60000",
        });
        assert_eq!(got, want);
    }

    #[test]
    fn doubles_json_cannot_hold_are_named() {
        let s = |v: f64| serde_json::to_string(&Double(v)).unwrap();
        assert_eq!(s(f64::NAN), "\"NaN\"");
        assert_eq!(s(f64::NEG_INFINITY), "\"-Infinity\"");
        assert_eq!(s(1.25), "1.25");
    }
}
