//! Who is calling and what they may see: policies ([`policy`]) and their enforcement inside the
//! query engine ([`enforce`]).

pub mod audit;
pub mod enforce;
pub mod identity;
pub mod policy;

pub use identity::{Authenticator, Caller, Refusal};
pub use policy::{Access, HmacKey, Policies};
