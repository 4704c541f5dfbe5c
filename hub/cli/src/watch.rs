//! `aq status` as a command: the status fetched and made a listing ([`status_view`]), the
//! exit code of `--fail-on-failed` ([`check_failed`]) and `--watch` ([`watch`]): the status
//! every 2 s until Ctrl-C, redrawn on a terminal, printed again when it changed otherwise.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::connect::{HubConn, explain};
use crate::exit::{Exit, Exited};
use crate::output::{Format, render, rfc3339};
use crate::status::StatusView;

/// The hub's build, as `Info` says; None for a hub that does not serve it yet.
pub async fn hub_version(admin: &mut AdminClient<Channel>, hub: &HubConn) -> Result<Option<String>> {
    match admin.info(pb::InfoRequest {}).await {
        Ok(info) => Ok(Some(info.into_inner().hub_version)),
        Err(status) if status.code() == tonic::Code::Unimplemented => Ok(None),
        Err(status) => Err(explain(status, hub)),
    }
}

/// The status as `aq status` lists it.
pub async fn status_view(
    admin: &mut AdminClient<Channel>,
    hub: &HubConn,
    dataset: &Option<String>,
    nodes: bool,
) -> Result<StatusView> {
    let req = pb::StatusRequest { dataset: dataset.clone().unwrap_or_default() };
    let status = admin.status(req).await.map_err(|e| explain(e, hub))?.into_inner();
    let hub_version = if nodes { hub_version(admin, hub).await? } else { None };
    Ok(StatusView::new(status, nodes, hub_version))
}

/// With --fail-on-failed: the error that ends `aq` with 3 when a row shown is Failed.
pub fn check_failed(view: &StatusView, fail_on_failed: bool) -> Result<()> {
    let failed = view.failed();
    if fail_on_failed && !failed.is_empty() {
        return Err(Exited::new(Exit::Failed, format!("{} row(s) Failed: {}", failed.len(), failed.join("; "))).into());
    }
    Ok(())
}

/// `aq status --watch`: the status every 2 s until Ctrl-C, redrawn on a terminal and printed
/// again when it changed otherwise. A hub that cannot be reached for a moment is asked again.
pub async fn watch(
    admin: &mut AdminClient<Channel>,
    hub: &HubConn,
    dataset: &Option<String>,
    nodes: bool,
    fail_on_failed: bool,
    format: Format,
) -> Result<()> {
    let terminal = std::io::stdout().is_terminal();
    let mut last: Option<String> = None;
    // Registered before anything is shown, so that a Ctrl-C at any time ends the watch.
    let mut ctrl_c = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for Ctrl-C")?;
    loop {
        match status_view(admin, hub, dataset, nodes).await {
            Ok(view) => {
                let text = render(&view, format)?;
                let mut out = std::io::stdout().lock();
                let written = if terminal {
                    let now =
                        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
                    let now = rfc3339(now as i64).unwrap_or_default();
                    write!(out, "\x1b[2J\x1b[HEvery 2s: aq status (Ctrl-C to stop)   {now}\n\n{text}")
                } else if last.as_ref() != Some(&text) {
                    let gap = if last.is_some() { "\n" } else { "" };
                    write!(out, "{gap}{text}")
                } else {
                    Ok(())
                };
                // A reader that went away (`| head`) ends the watch.
                if written.and_then(|()| out.flush()).is_err() {
                    return Ok(());
                }
                last = Some(text);
                check_failed(&view, fail_on_failed)?;
            }
            // Nothing shown yet: the error is the answer.
            Err(e) if last.is_none() => return Err(e),
            Err(e) => eprintln!("error: {e:#} (trying again in 2 s)"),
        }
        tokio::select! {
            _ = ctrl_c.recv() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
