//! The API client generated at build time from the committed
//! `openapi/openapi.json`: if the spec cannot drive a generator, this fails to build.

progenitor::generate_api!(spec = "openapi/openapi.json", interface = Positional);
