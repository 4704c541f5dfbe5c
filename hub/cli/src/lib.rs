//! The parts of `aq`: finding and reaching the hub ([`connect`]), printing tables, sizes,
//! progress and the output formats of listings ([`output`]), the listings themselves
//! ([`views`], [`status`]), rollout plans and deadlines ([`plan`]), watched datasets' flags and views
//! ([`triggers`]), enrolment tokens ([`enrol`]), `aq status` as a command ([`watch`]), waiting for regions
//! ([`wait`]), the trust commands (revocation, admins, audit: [`trust`]), checking mounted files
//! offline ([`verify`]), exit codes ([`exit`]) and manual
//! pages ([`manpages`]). `aq-quickstart`
//! (the `aqueduct-quickstart` crate) talks to its hub with them. Like `aq`, they depend on the
//! contract only.

pub mod connect;
pub mod enrol;
pub mod exit;
pub mod lifecycle;
pub mod manpages;
pub mod output;
pub mod plan;
pub mod status;
pub mod triggers;
pub mod trust;
pub mod verify;
pub mod views;
pub mod wait;
pub mod watch;
