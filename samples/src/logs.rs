//! Log records the simulated services write: a deploy announces itself at
//! startup, as an application's startup log line does. Built as OTLP with
//! simulation timestamps (the SDK would stamp the wall clock).

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;

fn string(v: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(v.into())),
    })
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: string(v),
        ..Default::default()
    }
}

/// The startup record of a newly deployed instance.
pub fn deploy(
    service: &str,
    version: &str,
    instance: &str,
    at_unix_nano: u64,
) -> ExportLogsServiceRequest {
    let record = LogRecord {
        time_unix_nano: at_unix_nano,
        observed_time_unix_nano: at_unix_nano,
        severity_number: 9,
        severity_text: "INFO".into(),
        body: string(&format!("Deployed {service} {version} on {instance}")),
        attributes: vec![kv("event.name", "deploy"), kv("service.version", version)],
        ..Default::default()
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", service),
                    kv("service.version", version),
                    kv("service.instance.id", instance),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![record],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}
