-- Every delivery attempt that failed keeps its error: `error_message` holds
-- the last one, `attempt_errors` all of them in order, each
-- {"attempt": n, "at": time, "error": text}. A re-send starts the attempts
-- over and keeps the errors of before.
ALTER TABLE email_sent_log ADD COLUMN attempt_errors jsonb NOT NULL DEFAULT '[]';
UPDATE email_sent_log
   SET attempt_errors = jsonb_build_array(jsonb_build_object(
           'attempt', attempts, 'at', updated_at, 'error', error_message))
 WHERE error_message IS NOT NULL;
