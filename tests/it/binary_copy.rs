//! PostgreSQL exports read through binary COPY and decoded in Rust give exactly the text the
//! server's own rendering gives (`Dialect::render`: to_char, casts to text), value for value,
//! for edge values of every type the decoder takes: integers at their limits, floats in fixed
//! and exponent form (and NaN, ±Infinity, −0), numerics (NaN, ±Infinity, scales, huge), BC and
//! infinite dates and timestamps, padded character(n), bytea, unicode text, NULL.

use crate::common;

use common::{Raw, TestDb};
use tidemark::db::{ClockNeed, DbKind, RowSink, SnapshotOptions};
use tidemark::ident::TableName;

#[derive(Default)]
struct Collect(Vec<Vec<Option<String>>>);

impl RowSink for Collect {
    fn write_fields(&mut self, fields: &[Option<&str>]) -> std::io::Result<()> {
        self.0
            .push(fields.iter().map(|f| f.map(str::to_string)).collect());
        Ok(())
    }

    fn write_csv_record(&mut self, record: &[u8]) -> std::io::Result<()> {
        self.0
            .push(tidemark::format::csv::parse_csv_record(record).unwrap());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_copy_gives_the_servers_text() {
    let t = TestDb::new(DbKind::Postgres).await;
    let mut raw = Raw::open(&t).await;
    raw.exec(
        "CREATE TABLE edge (id INT PRIMARY KEY, i2 SMALLINT, i8 BIGINT, r REAL, f DOUBLE PRECISION, \
         n NUMERIC, n2 NUMERIC(12,5), ok BOOLEAN, c CHARACTER(5), v VARCHAR(9), t TEXT, b BYTEA, \
         dt DATE, ts TIMESTAMP, tz TIMESTAMPTZ, tm TIME, j JSONB)",
    )
    .await;
    let rows = [
        "(1, 32767, 9223372036854775807, 0.1, 0.1, 0, 0, true, 'ab', 'ab', 'ünï \"q\",\n', '\\x00ff', \
          '2026-11-21', '2026-11-21 04:37:00.123456', '2026-11-21 04:37:00.123456+02', '12:34:56.5', '{\"a\": 1}')",
        "(2, -32768, -9223372036854775808, 123456, 1e15, 'NaN', -0.00120, false, '', '', '', '\\x', \
          '0001-01-01 BC', '0044-03-15 12:00:00 BC', '1901-02-03 01:02:03.5+00', '00:00', 'null')",
        "(3, 0, 0, 1e6, 123456789012345, 'Infinity', 1234567.1, NULL, 'abcde', 'x', 'line', '\\x27', \
          'infinity', 'infinity', '-infinity', NULL, NULL)",
        "(4, NULL, NULL, 'NaN', 1e-5, '-Infinity', 0.00001, NULL, NULL, NULL, NULL, NULL, \
          '-infinity', '-infinity', 'infinity', NULL, NULL)",
        "(5, 1, 1, '-Infinity', 0.0001, 99999999999999999999999999999999999999.000000000000000001, \
          -1, NULL, NULL, NULL, NULL, NULL, '5874897-12-31', '294276-12-31 23:59:59.999999', \
          '1999-12-31 23:59:59.999999+00', NULL, NULL)",
        "(6, 2, 2, -0.0, '-0', 1e-40, 0.5, NULL, NULL, NULL, NULL, NULL, '1999-12-31', \
          '2000-01-01 00:00:00', '1970-01-01 00:00:00.000001+00', NULL, NULL)",
        "(7, 3, 3, 3.4028235e38, 1.7976931348623157e308, 0.000001, 10, NULL, NULL, NULL, NULL, NULL, \
          '4713-01-01 BC', '4713-01-01 00:00:00 BC', '2000-02-29 12:00:00+00', NULL, NULL)",
        "(8, 4, 4, 1.4e-45, 5e-324, -123.456, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
          NULL, NULL)",
        "(9, 5, 5, 1.5e-5, -2.5e-7, 10000, 100000, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
          NULL, NULL)",
    ];
    raw.exec(&format!("INSERT INTO edge VALUES {}", rows.join(", ")))
        .await;
    let table = TableName::parse("edge").unwrap();
    let info = t.db.describe(&table).await.unwrap();
    let d = t.db.dialect();
    let select = |streamed: bool| {
        let cols: Vec<String> = info
            .columns
            .iter()
            .map(|c| {
                if streamed {
                    d.render_streamed(c)
                } else {
                    d.render(c)
                }
            })
            .collect();
        format!("SELECT {} FROM edge ORDER BY id", cols.join(", "))
    };
    let mut snapshot =
        t.db.snapshot(&SnapshotOptions::new(
            std::time::Duration::ZERO,
            ClockNeed::UnlessTxids,
        ))
        .await
        .unwrap();
    let mut text = Collect::default();
    let mut binary = Collect::default();
    assert_eq!(snapshot.stream(&select(false), &mut text).await.unwrap(), 9);
    assert_eq!(
        snapshot.stream(&select(true), &mut binary).await.unwrap(),
        9
    );
    snapshot.finish().await.unwrap();
    assert_eq!(text.0.len(), 9);
    for (a, b) in text.0.iter().zip(&binary.0) {
        assert_eq!(a, b);
    }
    // Spot checks that the comparison compares something.
    assert_eq!(text.0[0][8].as_deref(), Some("ab   "));
    assert_eq!(text.0[1][5].as_deref(), Some("NaN"));
    assert_eq!(text.0[2][13].as_deref(), None);
}
