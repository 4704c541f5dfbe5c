//! The hub binary's logs: JSON lines with `AQUEDUCT_LOG_FORMAT=json`, and an unknown format is
//! refused before the hub does anything.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const HUB: &str = env!("CARGO_BIN_EXE_aqueduct-hub");

#[test]
fn json_logs_are_one_object_per_line_and_an_unknown_format_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let out = Command::new(HUB)
        .args(["init", "--data-dir"])
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .env("AQUEDUCT_LOG_FORMAT", "yaml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AQUEDUCT_LOG_FORMAT is \"yaml\"") && err.contains("json"), "{err}");
    assert!(!data.exists(), "the hub did something before refusing the format");

    let out =
        Command::new(HUB).args(["init", "--data-dir"]).arg(&data).args(["--listen", "127.0.0.1:0"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut hub = Command::new(HUB)
        .args(["serve", "--config"])
        .arg(data.join("hub.toml"))
        .env("AQUEDUCT_LOG_FORMAT", "json")
        .env("AQUEDUCT_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Every line is a JSON object; the hub says it serves within its first few (it may say
    // first that it raised its open-file limit).
    let mut stderr = BufReader::new(hub.stderr.take().unwrap());
    let (mut line, mut event) = (String::new(), serde_json::Value::Null);
    for _ in 0..5 {
        line.clear();
        stderr.read_line(&mut line).unwrap();
        event = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if event["fields"]["message"] == "hub serving" {
            break;
        }
    }
    let _ = hub.kill();
    let _ = hub.wait();
    assert_eq!(event["level"], "INFO", "{line}");
    assert_eq!(event["fields"]["message"], "hub serving", "{line}");
    assert!(event["fields"]["addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{line}");
    assert!(event["timestamp"].is_string(), "{line}");
}
