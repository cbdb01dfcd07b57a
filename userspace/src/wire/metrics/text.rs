//! Prometheus text format 0.0.4 from OpenMetrics text.
//!
//! prometheus-client writes OpenMetrics only; Prometheus servers and other
//! scrapers that ask for `text/plain` expect the older format, where a
//! counter's TYPE line names the `_total` series, info metrics are gauges,
//! and there is no `# UNIT` or `# EOF`. The translation is this small
//! rewrite of metadata lines; samples are identical in both formats.

use std::collections::HashMap;

pub fn openmetrics_to_prometheus(om: &str) -> String {
    // name → suffix its samples carry in the old format.
    let mut rename: HashMap<&str, (&str, &str)> = HashMap::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                match kind {
                    "counter" => {
                        rename.insert(name, ("_total", "counter"));
                    }
                    "info" => {
                        rename.insert(name, ("_info", "gauge"));
                    }
                    _ => {}
                }
            }
        }
    }
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# TYPE ")
            .map(|r| ("# TYPE ", r))
            .or(line.strip_prefix("# HELP ").map(|r| ("# HELP ", r)));
        if let Some((prefix, rest)) = meta {
            if let Some((name, tail)) = rest.split_once(' ') {
                if let Some((suffix, kind)) = rename.get(name) {
                    out.push_str(prefix);
                    out.push_str(name);
                    out.push_str(suffix);
                    out.push(' ');
                    out.push_str(if prefix == "# TYPE " { kind } else { tail });
                    out.push('\n');
                    continue;
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_counter_and_info_metadata_only() {
        let om = "# HELP x_writes Writes.\n# TYPE x_writes counter\nx_writes_total{a=\"b\"} 3\n\
                  # HELP x_build Build.\n# TYPE x_build info\nx_build_info{v=\"1\"} 1\n\
                  # HELP x_wait Wait.\n# TYPE x_wait histogram\n# UNIT x_wait seconds\nx_wait_bucket{le=\"+Inf\"} 0\n# EOF\n";
        let p = openmetrics_to_prometheus(om);
        assert_eq!(
            p,
            "# HELP x_writes_total Writes.\n# TYPE x_writes_total counter\nx_writes_total{a=\"b\"} 3\n\
             # HELP x_build_info Build.\n# TYPE x_build_info gauge\nx_build_info{v=\"1\"} 1\n\
             # HELP x_wait Wait.\n# TYPE x_wait histogram\nx_wait_bucket{le=\"+Inf\"} 0\n"
        );
    }
}
