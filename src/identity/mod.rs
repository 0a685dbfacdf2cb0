//! Who is calling: the scope vocabulary ([`scopes`]), API keys and their
//! snapshot ([`keys`]), and identity tokens ([`token`]: JWT shape,
//! verification, JWK sets, cache). Pure but for the JWK set fetch
//! (`token::fetch`); may import `limits` and `diag`.

pub mod keys;
pub mod scopes;
pub mod token;
