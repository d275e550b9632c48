//! What the simulated lottery host does with one request: the envelope and session checks, login, redeem, queries and reports.

use super::*;

impl LotterySim {
    /// Check the common parameters, the signature and the session; give the business parameters and the
    /// station the request is for.
    pub(super) fn check_envelope(&self, path: &str, pairs: &[(String, String)]) -> Result<(Map<String, Value>, String), Ans> {
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        match get("app_key") {
            None | Some("") => return Err(Ans::fail("18", "missing app_key")),
            Some(k) if k != self.cfg.app_key => return Err(Ans::fail("19", "unknown app_key")),
            _ => {}
        }
        match get("v") {
            None | Some("") => return Err(Ans::fail("4", "missing v")),
            Some("1.0") => {}
            Some(_) => return Err(Ans::fail("5", "only v=1.0")),
        }
        let ts = get("timestamp").filter(|s| !s.is_empty()).ok_or_else(|| Ans::fail("7", "missing timestamp"))?;
        let when = if ts.bytes().all(|b| b.is_ascii_digit()) {
            ts.parse::<i64>().ok().map(|n| if n > 1_000_000_000_000 { n / 1000 } else { n })
        } else {
            NaiveDateTime::parse_from_str(ts, "%Y-%m-%d %H:%M:%S").ok().and_then(|t| beijing().from_local_datetime(&t).single()).map(|t| t.timestamp())
        };
        #[allow(clippy::disallowed_methods)]
        let now = chrono::Utc::now().timestamp();
        match when {
            Some(t) if (t - now).abs() <= 30 * 60 => {}
            _ => {
                self.lock().stale_timestamps += 1;
                return Err(Ans::fail("8", "timestamp more than 30 minutes off"));
            }
        }
        let sig = get("sign").filter(|s| !s.is_empty()).ok_or_else(|| Ans::fail("11", "missing sign"))?;
        let method = match get("sign_method") {
            None => SignMethod::Md5,
            Some(m) => SignMethod::parse(m).ok_or_else(|| Ans::fail("12", "sign_method must be MD5 or SHA-1"))?,
        };
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if !sign::verify(&refs, &self.cfg.app_secret, method, sig) {
            let mut st = self.lock();
            st.bad_signs += 1;
            st.violations.push(format!("{path}: bad signature"));
            return Err(Ans::fail("12", "signature does not verify"));
        }
        let params: Map<String, Value> = match get("param_json").map(serde_json::from_str::<Value>) {
            Some(Ok(Value::Object(m))) => m,
            _ => return Err(Ans::fail("13", "param_json must be a JSON object")),
        };
        if path == wire::LOGIN_PATH {
            let station = text(&params, "stationId");
            return Ok((params, station));
        }
        let token = get("access_token").filter(|s| !s.is_empty()).ok_or_else(|| Ans::fail("16", "missing access_token"))?;
        let st = self.lock();
        if st.superseded.contains(token) {
            drop(st);
            self.lock().stale_tokens += 1;
            return Err(Ans::fail("1021", "this station logged in elsewhere"));
        }
        if st.expired.contains(token) {
            drop(st);
            self.lock().stale_tokens += 1;
            return Err(Ans::fail("27", "token expired"));
        }
        let station = st.tokens.get(token).cloned().ok_or_else(|| Ans::fail("28", "unknown token"))?;
        Ok((params, station))
    }

    pub(super) fn process(&self, path: &str, station: &str, p: &Map<String, Value>) -> Ans {
        let mut st = self.lock();
        match path {
            wire::LOGIN_PATH => self.login(&mut st, p),
            wire::REDEEM_PATH => self.redeem(&mut st, station, p),
            "proxy/station/password" => {
                let cur = st.passwords.get(station).cloned().unwrap_or_default();
                let new = text(p, "new");
                if text(p, "old") != cur || new.is_empty() {
                    return Ans::fail("10008", "old password wrong or new one empty");
                }
                st.passwords.insert(station.into(), new);
                Ans::ok("10000", json!({}))
            }
            "proxy/validate/getCount" => {
                let (t, a) = st.counts.get(station).copied().unwrap_or((0, 0));
                Ans::ok("10000", json!({"tickets": t, "amount": a / 100}))
            }
            "proxy/validate/resetCount" => {
                st.counts.insert(station.into(), (0, 0));
                Ans::ok("10000", json!({}))
            }
            "proxy/validate/getPrize" => {
                let bar = text(p, "barCode");
                if let Some(&i) = st.by_bar.get(&bar) {
                    let pay = &st.payments[i];
                    return Ans::ok("10000", json!({"level": pay.level, "prize": pay.prize_fen / 100, "stationId": pay.station, "awardTime": pay.time}));
                }
                match self.tickets.get(&bar) {
                    Some(t) if t.kind == TicketKind::RedeemedElsewhere => Ans::ok(
                        "10000",
                        json!({"level": t.level, "prize": t.prize_yuan, "stationId": self.cfg.other_station, "awardTime": "2026-01-01 10:00:00"}),
                    ),
                    _ => Ans::fail("3202", "no redemption record"),
                }
            }
            "migt/report/award"
                if text(p, "gameNo").is_empty() || text(p, "batchNo").is_empty() || text(p, "gameNo") == "00000" || text(p, "batchNo") == "00000" =>
            {
                Ans::fail("13", "report/award queries one game and batch (gameNo, batchNo required; no 00000 since v1.0)")
            }
            "migt/report/sales" | "migt/report/balance" | "migt/report/trace" | "migt/report/award" => {
                Ans::ok("10000", json!({"report": self.html_report(&st, path, station, p)}))
            }
            wire::AWARD_SUMMARY | wire::AWARD_DETAIL => {
                let (begin, end) = (text(p, "beginTime"), text(p, "endTime"));
                if NaiveDateTime::parse_from_str(&begin, "%Y-%m-%d %H:%M:%S").is_err() || NaiveDateTime::parse_from_str(&end, "%Y-%m-%d %H:%M:%S").is_err() {
                    return Ans::fail(if path == wire::AWARD_SUMMARY { "10038" } else { "10039" }, "beginTime/endTime must be YYYY-MM-DD HH:MM:SS");
                }
                let (game, batch) = (text(p, "gameNo"), text(p, "batchNo"));
                let all = game == "00000" && batch == "00000";
                if path == wire::AWARD_SUMMARY && all && st.refuse_summary_all {
                    return Ans::fail("13", "awardSummary queries one game and batch at a time");
                }
                // Every simulated ticket is of batch 00001.
                let rows: Vec<(&SimPayment, i64)> = st
                    .payments
                    .iter()
                    .filter(|x| x.station == station && x.time >= begin && x.time <= end && !st.hidden.contains(&x.transac_id))
                    .filter(|x| all || (x.game_no == game && batch == SIM_BATCH))
                    .map(|x| (x, st.reported_prize.get(&x.transac_id).copied().unwrap_or(x.prize_fen)))
                    .collect();
                if path == wire::AWARD_SUMMARY {
                    let amount: i64 = rows.iter().map(|r| r.1).sum();
                    Ans::ok("10000", json!({"gameNo": game, "batchNo": batch, "tickets": rows.len().to_string(), "amount": money::fen_to_yuan(amount)}))
                } else {
                    // 8.8.2's fields exactly: no prize, no level.
                    let list: Vec<Value> =
                        rows.iter().map(|(x, _)| json!({"gameNo": x.game_no, "batchNo": SIM_BATCH, "packNo": x.pack_no, "ticketNo": x.ticket_no, "transacId": x.transac_id, "time": x.time})).collect();
                    Ans::ok("10000", Value::Array(list))
                }
            }
            _ => Ans::fail("1004", "unsupported"),
        }
    }

    fn login(&self, st: &mut State, p: &Map<String, Value>) -> Ans {
        let id = text(p, "stationId");
        let Some(s) = self.cfg.stations.iter().find(|s| s.id == id) else { return Ans::fail("1030", "unknown station") };
        if text(p, "clerkId") != s.clerk {
            return Ans::fail("1006", "no such clerk");
        }
        if st.passwords.get(&id).map(String::as_str) != Some(text(p, "password").as_str()) {
            return Ans::fail("1007", "wrong password");
        }
        if text(p, "type").is_empty() || text(p, "version").is_empty() {
            return Ans::fail("1003", "type and version are required");
        }
        let serial = text(p, "serialNo");
        match st.serials.get(&id) {
            Some(bound) if *bound != serial => return Ans::fail("1011", "serial number differs from the bound one"),
            Some(_) => {}
            None => {
                st.serials.insert(id.clone(), serial);
            }
        }
        let token = hex::encode(rand::random::<[u8; 16]>());
        if let Some(old) = st.current.insert(id.clone(), token.clone()) {
            st.superseded.insert(old);
        }
        st.tokens.insert(token.clone(), id);
        st.logins += 1;
        Ans::ok("10000", json!({"token": token, "serverTime": now_text()}))
    }

    fn redeem(&self, st: &mut State, station: &str, p: &Map<String, Value>) -> Ans {
        st.redeem_attempts += 1;
        let (user, ip, transac, bar) = (text(p, "userId"), text(p, "userRealIp"), text(p, "transacId"), text(p, "barCode"));
        if user.is_empty() || ip.is_empty() || transac.is_empty() || bar.is_empty() || transac.len() > 32 || user.len() > 32 {
            return Ans::fail("1003", "userId, userRealIp, transacId (at most 32) and barCode are required");
        }
        if !user.bytes().all(|b| b.is_ascii_alphanumeric()) || !transac.bytes().all(|b| b.is_ascii_alphanumeric()) {
            st.violations.push(format!("userId {user:?} / transacId {transac:?}: letters and digits only (8.4)"));
            return Ans::fail("1003", "userId and transacId are letters and digits only");
        }
        if text(p, "type") != "1701" {
            return Ans::fail("1004", "only type 1701 (station machine-read) is supported");
        }
        if !st.seen_transac.insert(transac.clone()) {
            if let Some(ret) = st.resend_answer.clone() {
                return Ans::fail(&ret, "this transacId reached the host before");
            }
        }
        let already = |pay: &SimPayment, t: &SimTicket| {
            Ans::ok(
                "1307",
                json!({"transacId": transac, "transacIdOrg": pay.transac_id, "ticketNo": t.display_no(), "gameName": t.game_name, "price": t.price_yuan,
                       "level": t.level, "prize": t.prize_yuan, "balance": 0, "awardStation": pay.station, "awardTime": pay.time, "soldCity": "北京",
                       "Amoutticket": 0, "AmountPrize": 0}),
            )
        };
        if let Some(&i) = st.by_transac.get(&transac) {
            let pay = st.payments[i].clone();
            if pay.bar_code != bar {
                st.transac_reused += 1;
                st.violations.push(format!("transacId {transac} reused for another ticket"));
                return Ans::fail("10030", "transacId already used for another ticket");
            }
        }
        let Some(t) = self.tickets.get(&bar) else { return Ans::fail("1303", "ticket unknown here") };
        let ticket_data = json!({"transacId": transac, "ticketNo": t.display_no(), "gameName": t.game_name, "price": t.price_yuan});
        match t.kind {
            TicketKind::Losing => return Ans { success: false, ret: "1305".into(), detail: None, content: ticket_data },
            TicketKind::OverLimit => return Ans { success: false, ret: "1304".into(), detail: None, content: ticket_data },
            TicketKind::RedeemedElsewhere => {
                let pay = SimPayment {
                    transac_id: format!("99{}", &bar[bar.len().saturating_sub(20)..]),
                    station: self.cfg.other_station.clone(),
                    bar_code: bar.clone(),
                    ticket_no: t.ticket_no.clone(),
                    game_no: t.game_no.clone(),
                    pack_no: t.pack_no.clone(),
                    level: t.level,
                    prize_fen: t.prize_yuan * 100,
                    time: "2026-01-01 10:00:00".into(),
                    user_id: String::new(),
                    planted: false,
                };
                return already(&pay, t);
            }
            TicketKind::Winning => {}
        }
        if let Some(&i) = st.by_bar.get(&bar) {
            let pay = st.payments[i].clone();
            return already(&pay, t);
        }
        let prize_fen = t.prize_yuan * 100;
        let pay = SimPayment {
            transac_id: transac.clone(),
            station: station.into(),
            bar_code: bar.clone(),
            ticket_no: t.ticket_no.clone(),
            game_no: t.game_no.clone(),
            pack_no: t.pack_no.clone(),
            level: t.level,
            prize_fen,
            time: now_text(),
            user_id: user,
            planted: false,
        };
        st.payments.push(pay);
        let i = st.payments.len() - 1;
        st.by_bar.insert(bar, i);
        st.by_transac.insert(transac.clone(), i);
        let c = st.counts.entry(station.into()).or_insert((0, 0));
        c.0 += 1;
        c.1 += prize_fen;
        let counts = *c;
        let bal = st.balances.entry(station.into()).or_insert(0);
        *bal += prize_fen;
        let balance = *bal as f64 / 100.0;
        Ans::ok(
            "1301",
            json!({"transacId": transac, "ticketNo": t.display_no(), "gameName": t.game_name, "price": t.price_yuan, "level": t.level, "prize": t.prize_yuan,
                   "balance": balance, "soldCity": "北京", "amountTicket": counts.0, "amountPrize": counts.1 / 100}),
        )
    }

    fn html_report(&self, st: &State, path: &str, station: &str, p: &Map<String, Value>) -> String {
        let title = match path {
            "migt/report/sales" => "进销存查询",
            "migt/report/balance" => "账户查询",
            "migt/report/trace" => "彩票追踪查询",
            _ => "兑奖明细记录查询",
        };
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let mut rows = String::new();
        match path {
            "migt/report/balance" => {
                let b = st.balances.get(station).copied().unwrap_or(0);
                rows.push_str(&format!("<tr><td>{}</td><td>{}</td></tr>", esc(station), money::fen_to_yuan(b)));
            }
            "migt/report/trace" => {
                let bar = text(p, "barCode");
                let state = if st.by_bar.contains_key(&bar) {
                    "已兑奖"
                } else if self.tickets.contains_key(&bar) {
                    "已入站"
                } else {
                    "未知"
                };
                rows.push_str(&format!("<tr><td>{}</td><td>{state}</td></tr>", esc(&bar)));
            }
            _ => {
                for x in st.payments.iter().filter(|x| x.station == station) {
                    rows.push_str(&format!(
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(&x.time),
                        esc(&x.ticket_no),
                        x.level,
                        money::fen_to_yuan(x.prize_fen)
                    ));
                }
            }
        }
        format!("<html><body><h3>{title} {}</h3><table>{rows}</table></body></html>", esc(station))
    }
}
