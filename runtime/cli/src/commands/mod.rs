//! One module per verb: its flags (clap `Args`) and a `run` that calls
//! into the library crates and prints.

pub mod beat;
pub mod build;
pub mod components;
pub mod demo;
pub mod dlq;
pub mod events;
pub mod inspect;
pub mod keygen;
pub mod result;
pub mod revoke;
pub mod run;
pub mod serve;
pub mod sign;
pub mod status;
pub mod submit;
pub mod token;
pub mod upload;
pub mod verify;
pub mod worker;
pub mod workflow;
