//! Shared helpers of the end-to-end tests: starts gateways, authorization servers and upstreams on 127.0.0.1:0.
