//! Network-namespace plumbing (unique names, [`Namespace`], [`VethPair`], [`TwoHosts`]):
//! it lives in [`wg_netns::netns`], shared with the end-to-end tests in `tests/e2e`.

pub(crate) use wg_netns::netns::*;
