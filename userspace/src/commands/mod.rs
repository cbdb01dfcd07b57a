//! The commands, one module each, on top of every other layer: they attach
//! through [`crate::kernel`], read through [`crate::collect`], judge with
//! [`crate::model`] and print through [`crate::wire`]. `session` is what the
//! attached commands share, `signals` how they end. Their flags are in [`crate::cli`].

pub mod demo;
pub mod doctor;
pub mod export;
pub mod session;
pub mod signals;
pub mod stat;
pub mod top;
pub mod verify;
