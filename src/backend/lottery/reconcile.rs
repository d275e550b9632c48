//! The daily reconciliation: every station's awardDetail and awardSummary against the day's journal records.
use super::*;

/// How awardSummary is asked (profile option `summary_scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryScope {
    /// `00000`/`00000` (the table's "all"); where the host refuses that, once per (gameNo, batchNo).
    All,
    /// Once per (gameNo, batchNo) named by the day's awardDetail rows (the v0.8 history line).
    PerBatch,
}

impl LotteryBackend {
    /// awardDetail and awardSummary for one day on every station (each answers for itself only), per the
    /// profile's `summary_scope`. A station that stays busy, or a host that refuses, fails the whole
    /// reconciliation (it is tried again later).
    async fn remote_awards(&self, date: chrono::NaiveDate, journal_id: u64) -> Result<Remote, BackendError> {
        let mut out = Remote::default();
        for i in 0..self.pool.len() {
            let g = self.station_guard(i).await?;
            let st = g.station();
            let d = self.call(st, wire::AWARD_DETAIL, &day_params(date, "00000", "00000"), journal_id).await?;
            if !d.success {
                return Err(err(Stage::Rejected, format!("awardDetail at station {}: ret {} {}", st.id, d.ret, scrub(&d.msg))));
            }
            let rows: Vec<Map<String, Value>> = detail_rows(&d.content).into_iter().cloned().collect();
            let mut per_batch = self.summary_scope == SummaryScope::PerBatch;
            if !per_batch {
                let s = self.call(st, wire::AWARD_SUMMARY, &day_params(date, "00000", "00000"), journal_id).await?;
                if s.success {
                    out.summaries.extend(summary_rows(&s.content, &st.id, ("00000", "00000")));
                } else {
                    out.notes.push(format!(
                        "station {}: awardSummary for all games refused (ret {} {}): asked once per game and batch",
                        st.id,
                        s.ret,
                        scrub(&s.msg)
                    ));
                    per_batch = true;
                }
            }
            if per_batch {
                let keys: std::collections::BTreeSet<(String, String)> = rows.iter().map(|r| (text(r.get("gameNo")), text(r.get("batchNo")))).collect();
                for (game, batch) in keys {
                    let s = self.call(st, wire::AWARD_SUMMARY, &day_params(date, &game, &batch), journal_id).await?;
                    if !s.success {
                        return Err(err(Stage::Rejected, format!("awardSummary {game}/{batch} at station {}: ret {} {}", st.id, s.ret, scrub(&s.msg))));
                    }
                    out.summaries.extend(summary_rows(&s.content, &st.id, (&game, &batch)));
                }
            }
            for mut row in rows {
                row.insert("station".into(), Value::from(st.id.as_str()));
                out.rows.push(row);
            }
            out.stations.push(st.id.clone());
        }
        Ok(out)
    }

    pub(super) async fn reconcile(&self, req: &ReportRequest<'_>) -> Result<Reply, BackendError> {
        let remote = self.remote_awards(req.date, req.journal_id).await?;
        let report = compare(req.date, req.records, &remote, &self.merchant, self.tz);
        let balanced = report.get("balanced").and_then(Value::as_bool).unwrap_or(false);
        let differences = report.get("differences").and_then(Value::as_i64).unwrap_or(0);
        if !balanced {
            tracing::warn!(date = %req.date, differences, "lottery reconciliation: not balanced; a person must look at the report");
        }
        Ok(Reply {
            verdict: Verdict::Approved,
            code: "10000".into(),
            message: if balanced { "对账平".into() } else { format!("对账不平: {differences} 处差异") },
            message_en: if balanced { "reconciled: balanced".into() } else { format!("reconciled: {differences} difference(s)") },
            fields: report,
            reference: None,
            trans_time: None,
            amount_fen: None,
        })
    }
}

/// awardSummary / awardDetail parameters for one Beijing-time day.
pub(super) fn day_params(date: chrono::NaiveDate, game: &str, batch: &str) -> [(&'static str, Value); 4] {
    [
        ("gameNo", Value::from(game)),
        ("batchNo", Value::from(batch)),
        ("beginTime", Value::from(format!("{date} 00:00:00"))),
        ("endTime", Value::from(format!("{date} 23:59:59"))),
    ]
}

/// awardDetail `content`: a list of rows, a single row object, or an object holding the list.
pub(super) fn detail_rows(content: &Value) -> Vec<&Map<String, Value>> {
    match content {
        Value::Array(a) => a.iter().filter_map(Value::as_object).collect(),
        Value::Object(m) if m.contains_key("transacId") || m.contains_key("ticketNo") => vec![m],
        Value::Object(m) => m.values().find_map(Value::as_array).map(|a| a.iter().filter_map(Value::as_object).collect()).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// awardSummary `content` (one object or a list), with the asked game and batch where a row names none.
pub(super) fn summary_rows(content: &Value, station: &str, asked: (&str, &str)) -> Vec<Summary> {
    let list: Vec<&Map<String, Value>> = match content {
        Value::Array(a) => a.iter().filter_map(Value::as_object).collect(),
        Value::Object(m) if m.contains_key("tickets") || m.contains_key("amount") => vec![m],
        Value::Object(m) => m.values().find_map(Value::as_array).map(|a| a.iter().filter_map(Value::as_object).collect()).unwrap_or_default(),
        _ => Vec::new(),
    };
    list.into_iter()
        .map(|x| {
            let or = |k: &str, d: &str| Some(text(x.get(k))).filter(|s| !s.is_empty()).unwrap_or_else(|| d.to_string());
            Summary {
                station: station.to_string(),
                game_no: or("gameNo", asked.0),
                batch_no: or("batchNo", asked.1),
                tickets: x.get("tickets").and_then(wire::text_of).and_then(|t| t.trim().parse::<i64>().ok()).unwrap_or(0),
                amount_fen: x.get("amount").and_then(|v| money::json_yuan_to_fen(v).ok()).unwrap_or(0),
            }
        })
        .collect()
}

pub(super) fn text(v: Option<&Value>) -> String {
    v.and_then(wire::text_of).unwrap_or_default()
}

/// An awardDetail row's ticket as thirdAward shows `ticketNo`: `gameNo-packNo-ticketNo`.
pub(super) fn ticket_of(row: &Map<String, Value>) -> String {
    let parts: Vec<String> = ["gameNo", "packNo", "ticketNo"].iter().map(|k| text(row.get(*k))).filter(|s| !s.is_empty()).collect();
    parts.join("-")
}

/// One awardSummary row of one station.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub station: String,
    /// `00000` with `batch_no` `00000`: every game and batch of the station.
    pub game_no: String,
    pub batch_no: String,
    pub tickets: i64,
    pub amount_fen: i64,
}

/// The backend's side of one day, over every station.
#[derive(Debug, Clone, Default)]
pub struct Remote {
    /// awardDetail rows as the host sent them (no prize), each with `station` set to the station asked.
    pub rows: Vec<Map<String, Value>>,
    pub summaries: Vec<Summary>,
    pub stations: Vec<String>,
    /// How the host was asked, where that differed from the profile (a refused `00000` summary).
    pub notes: Vec<String>,
}

/// Compare one day's journal records (engine views) with the backend's award rows.
///
/// Rows match records by `transacId` (the document's "important marker" of which request won); a row
/// and a record for the same ticket under different `transacId`s are one difference ("another
/// transacId won"). Amounts exist only on our side (thirdAward's `prize`) and in awardSummary: they
/// are compared per station and (gameNo, batchNo), a record taking its game and batch from its row.
/// A record's `transacId` is read from its result, or rebuilt from its trace and creation time
/// (records whose answer never came).
pub fn compare(date: chrono::NaiveDate, records: &[ReportRecord], remote: &Remote, merchant: &str, tz: FixedOffset) -> Map<String, Value> {
    use std::collections::BTreeMap;
    struct Local {
        id: Value,
        status: String,
        ticket: String,
        prize: i64,
        bar: String,
        station: String,
    }
    let mut local: BTreeMap<String, Local> = BTreeMap::new();
    // The engine sends a day either side; keep the redeems of this business day in the backend's zone.
    let on_date = |r: &&ReportRecord| chrono::DateTime::parse_from_rfc3339(&r.created_at).is_ok_and(|t| t.with_timezone(&tz).date_naive() == date);
    for r in records.iter().filter(|r| r.operation == "redeem").filter(on_date) {
        let transac = r.result.get("transacId").and_then(Value::as_str).map(str::to_string).or_else(|| transac_id(merchant, &r.created_at, &r.trace, tz).ok());
        let Some(transac) = transac else { continue };
        let prize = r.result.get("prize").and_then(Value::as_i64).unwrap_or(r.amount_fen);
        local.insert(
            transac,
            Local {
                id: Value::from(r.id),
                status: r.status.clone(),
                ticket: text(r.result.get("ticketNo")),
                prize,
                bar: text(r.public.get("barCode")),
                station: text(r.result.get("station")),
            },
        );
    }
    let approved = |l: &Local| l.status == "approved";
    let mut by_transac: BTreeMap<String, &Map<String, Value>> = BTreeMap::new();
    for row in &remote.rows {
        by_transac.insert(text(row.get("transacId")), row);
    }
    let (mut only_remote, mut only_local, mut station_mismatch, mut unresolved) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // (station, gameNo, batchNo) -> (tickets, fen) of our approved records, keyed by their rows.
    let mut ours: BTreeMap<(String, String, String), (i64, i64)> = BTreeMap::new();
    let mut ours_by_station: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let (mut local_count, mut local_amount) = (0i64, 0i64);
    for (t, l) in &local {
        if approved(l) {
            local_count += 1;
            local_amount += l.prize;
        } else if l.status == "pending" {
            unresolved.push(json!({"transacId": t, "journal_id": l.id, "barCode": l.bar}));
        }
    }
    for (t, row) in &by_transac {
        let st = text(row.get("station"));
        match local.get(t) {
            Some(l) if approved(l) => {
                if !l.station.is_empty() && l.station != st {
                    station_mismatch.push(json!({"transacId": t, "ticketNo": l.ticket, "journal_id": l.id, "local_station": l.station, "remote_station": st}));
                }
                let e = ours.entry((st.clone(), text(row.get("gameNo")), text(row.get("batchNo")))).or_default();
                e.0 += 1;
                e.1 += l.prize;
            }
            other => only_remote.push((t.clone(), *row, other)),
        }
    }
    for (t, l) in local.iter().filter(|(t, l)| approved(l) && !by_transac.contains_key(*t)) {
        only_local.push((t.clone(), l));
    }
    for l in local.values().filter(|l| approved(l)) {
        let e = ours_by_station.entry(l.station.clone()).or_default();
        e.0 += 1;
        e.1 += l.prize;
    }
    // The same ticket on both sides under different transacIds: another request won it.
    let mut different_winner = Vec::new();
    only_local.retain(|(t, l)| {
        let Some(k) = only_remote.iter().position(|(_, row, _)| !l.ticket.is_empty() && ticket_of(row) == l.ticket) else { return true };
        let (winner, row, _) = only_remote.remove(k);
        different_winner.push(json!({
            "transacId": t, "ticketNo": l.ticket, "journal_id": l.id, "local_prize_fen": l.prize,
            "winning_transacId": winner, "remote_station": text(row.get("station")), "awardTime": text(row.get("time")),
        }));
        false
    });
    let missing_locally: Vec<Value> = only_remote
        .iter()
        .map(|(t, row, l)| {
            json!({
                "transacId": t, "ticketNo": ticket_of(row), "gameNo": text(row.get("gameNo")), "batchNo": text(row.get("batchNo")),
                "awardTime": text(row.get("time")), "station": text(row.get("station")),
                "local_status": l.map(|l| Value::from(l.status.as_str())).unwrap_or(Value::Null),
                "journal_id": l.map(|l| l.id.clone()).unwrap_or(Value::Null),
            })
        })
        .collect();
    let missing_remotely: Vec<Value> = only_local
        .iter()
        .map(|(t, l)| json!({"transacId": t, "ticketNo": l.ticket, "barCode": l.bar, "journal_id": l.id, "local_prize_fen": l.prize, "station": l.station}))
        .collect();
    // Amounts: each summary row against our approved records of that station (and game and batch).
    let mut amount_mismatch = Vec::new();
    let (mut summary_count, mut summary_amount) = (0i64, 0i64);
    let mut covered: std::collections::BTreeSet<(String, String, String)> = Default::default();
    let mut all_scope: std::collections::BTreeSet<String> = Default::default();
    for s in &remote.summaries {
        summary_count += s.tickets;
        summary_amount += s.amount_fen;
        let all = s.game_no == "00000" && s.batch_no == "00000";
        let mine = if all {
            all_scope.insert(s.station.clone());
            ours_by_station.get(&s.station).copied().unwrap_or_default()
        } else {
            covered.insert((s.station.clone(), s.game_no.clone(), s.batch_no.clone()));
            ours.get(&(s.station.clone(), s.game_no.clone(), s.batch_no.clone())).copied().unwrap_or_default()
        };
        if mine != (s.tickets, s.amount_fen) {
            amount_mismatch.push(json!({
                "station": s.station, "gameNo": s.game_no, "batchNo": s.batch_no,
                "local_tickets": mine.0, "local_amount_fen": mine.1, "summary_tickets": s.tickets, "summary_amount_fen": s.amount_fen,
            }));
        }
    }
    // Batches we paid on a station whose summary came per batch but did not name them.
    for ((st, g, b), mine) in &ours {
        if !all_scope.contains(st) && !covered.contains(&(st.clone(), g.clone(), b.clone())) {
            amount_mismatch.push(json!({"station": st, "gameNo": g, "batchNo": b, "local_tickets": mine.0, "local_amount_fen": mine.1, "summary_tickets": 0, "summary_amount_fen": 0}));
        }
    }
    let differences = missing_locally.len() + missing_remotely.len() + different_winner.len() + station_mismatch.len() + amount_mismatch.len();
    let balanced = differences == 0;
    let mut text_lines = vec![
        format!("Lottery reconciliation {date} (stations {})", remote.stations.join(", ")),
        format!("journal: {local_count} tickets, {} yuan", money::fen_to_yuan(local_amount)),
        format!("backend: {} detail rows; summary {summary_count} tickets, {} yuan", remote.rows.len(), money::fen_to_yuan(summary_amount)),
    ];
    text_lines.extend(remote.notes.iter().cloned());
    for x in &missing_locally {
        text_lines.push(format!(
            "paid by the host, not approved here: ticket {} transacId {} station {} at {}",
            text(x.get("ticketNo")),
            text(x.get("transacId")),
            text(x.get("station")),
            text(x.get("awardTime"))
        ));
    }
    for x in &missing_remotely {
        text_lines.push(format!(
            "approved here, unknown to the host: ticket {} transacId {} journal {} ({} yuan)",
            text(x.get("ticketNo")),
            text(x.get("transacId")),
            text(x.get("journal_id")),
            money::fen_to_yuan(x.get("local_prize_fen").and_then(Value::as_i64).unwrap_or(0))
        ));
    }
    for x in &different_winner {
        text_lines.push(format!(
            "ticket {}: ours was transacId {}, the host paid transacId {}",
            text(x.get("ticketNo")),
            text(x.get("transacId")),
            text(x.get("winning_transacId"))
        ));
    }
    for x in &station_mismatch {
        text_lines.push(format!(
            "ticket {} transacId {}: journaled at station {}, paid at station {}",
            text(x.get("ticketNo")),
            text(x.get("transacId")),
            text(x.get("local_station")),
            text(x.get("remote_station"))
        ));
    }
    for x in &amount_mismatch {
        text_lines.push(format!(
            "station {} game {} batch {}: journal {} tickets {} yuan, summary {} tickets {} yuan",
            text(x.get("station")),
            text(x.get("gameNo")),
            text(x.get("batchNo")),
            text(x.get("local_tickets")),
            money::fen_to_yuan(x.get("local_amount_fen").and_then(Value::as_i64).unwrap_or(0)),
            text(x.get("summary_tickets")),
            money::fen_to_yuan(x.get("summary_amount_fen").and_then(Value::as_i64).unwrap_or(0))
        ));
    }
    text_lines.push(if balanced { "balanced".into() } else { format!("NOT balanced: {differences} difference(s)") });
    let mut m = Map::new();
    m.insert("date".into(), Value::from(date.to_string()));
    m.insert("stations".into(), json!(remote.stations));
    m.insert("missing_locally".into(), Value::Array(missing_locally));
    m.insert("missing_remotely".into(), Value::Array(missing_remotely));
    m.insert("different_winner".into(), Value::Array(different_winner));
    m.insert("station_mismatch".into(), Value::Array(station_mismatch));
    m.insert("amount_mismatch".into(), Value::Array(amount_mismatch));
    m.insert("unresolved_locally".into(), Value::Array(unresolved));
    m.insert(
        "totals".into(),
        json!({
            "local_count": local_count, "local_amount_fen": local_amount,
            "remote_count": remote.rows.len(),
            "summary_count": summary_count, "summary_amount_fen": summary_amount,
        }),
    );
    m.insert("differences".into(), Value::from(differences as i64));
    m.insert("balanced".into(), Value::Bool(balanced));
    m.insert("report_text".into(), Value::String(text_lines.join("\n")));
    m
}
