//! The parts of `aq` that other programs reuse: finding and reaching the hub ([`connect`]) and
//! printing tables, sizes and progress ([`output`]). `aq-quickstart` (the `aqueduct-quickstart`
//! crate) talks to its hub with them. Like `aq`, they depend on the contract only.

pub mod connect;
pub mod output;
