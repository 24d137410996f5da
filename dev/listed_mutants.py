"""Apply, one at a time, the mutations that once survived the whole suite (issue "every promise pinned by a test"),
run the tests that should kill each, and report which test killed it. Every mutant must be killed.

    python dev/listed_mutants.py            # all, one to two hours on 2 cores (the vLLM ones start engines)
    python dev/listed_mutants.py fsync      # those whose name contains "fsync"

Each mutation is an exact text replacement in one source file, restored afterwards whatever happens.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "expo_cli"
GUARANTEES = "tests/test_guarantees.py"
VERIFY = "tests/test_verify.py"
MERGE = "tests/test_merge.py::test_every_tensor_matches_the_float64_reference"
LOOKS = "tests/test_tune.py::test_the_held_out_prompts_are_spent_once_another_reward_is_a_later_stricter_look"
SHORT_CONTEXT = (
    "tests/test_tune.py::test_a_short_context_reward_model_is_announced_before_generating_and_its_cuts_counted"
)
VLLM = "vllm:"  # tests run by the vLLM environment's Python
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
SLICING = "tests/test_slicing.py"
RESUMED = "tests/test_tune_runs.py::test_a_run_killed_mid_candidate_resumes_to_the_uninterrupted_result"
CARD_TUNE = "tests/test_tune.py::test_tune_picks_the_alpha_that_amplifies_the_rewarded_behaviour"
CARD_COMMAND = "tests/test_publish.py::test_the_cards_command_makes_the_same_output_again"
DECISION = (
    "tests/test_selection.py::test_the_parts_are_in_prompt_order_and_the_holdout_is_a_fraction_below_one "
    "tests/test_selection.py::test_a_response_cut_to_fit_the_reward_model_counts_as_cut_and_loops_are_measured_on_"
    "three_word_runs tests/test_selection.py::test_the_split_is_seeded_by_prompt_and_warns_when_a_side_is_small "
    "tests/test_prompts.py"
)
VLLM_TP = "vllm:tests/test_vllm.py::test_tensor_parallel_workers_compute_their_slices_exactly"
SPREAD = "tests/test_tune_spread.py::test_one_process_workers_and_array_parts_give_the_same_result_and_bytes"
CLAIMS = (
    "tests/test_tune_spread.py::test_a_claim_held_by_a_live_process_is_busy_and_a_dead_ones_is_taken_over "
    "tests/test_tune_spread.py::test_of_four_takers_of_a_claim_exactly_one_gets_it_and_a_late_holder_learns_it_"
    "lost"
)
TRAJECTORY_VALUES = "tests/test_trajectory.py::test_a_trajectory_is_the_least_squares_line_at_the_step_rounded_once"
VLLM_FENCE = "vllm:tests/test_vllm.py::test_an_incomplete_or_overflowing_update_is_refused_and_fences_the_engine"
JUDGE = "tests/test_judge.py"
GUARD = "tests/test_guard.py"
TASKS = "tests/test_objectives.py"

# name: (file, text, replacement, tests expected to kill it)
MUTANTS: dict[str, tuple[str, str, str, str]] = {
    "no fsync of shards": ("core/writer.py", "                os.fsync(self.fd)", "                pass", GUARANTEES),
    "no fsync of config/card/index": ("fsutil.py", "        os.fsync(fh.fileno())", "        pass", GUARANTEES),
    "no fsync of the staged folder": ("merging/staging.py", "    fsync_path(staged)\n", "", GUARANTEES),
    "no fsync of copied side files": (
        "merging/sidefiles.py",
        "        fsync_path(destination)",
        "        pass",
        GUARANTEES,
    ),
    "no fsync of copied side folders": (
        "merging/sidefiles.py",
        "        fsync_path(folder)",
        "        pass",
        GUARANTEES,
    ),
    "--force deletes the old output first": (
        "merging/execution.py",
        "    for alpha in run.targets:\n",
        "    for o in run.targets.values():\n"
        "        __import__('shutil').rmtree(o, ignore_errors=True) if opts.force else None\n"
        "    for alpha in run.targets:\n",
        GUARANTEES,
    ),
    "--force replaces with two renames": (
        "merging/staging.py",
        "        if exchange(staged, output):",
        "        if False:",
        GUARANTEES,
    ),
    "stream.close() skipped": (
        "merging/execution.py",
        "            return {alpha: sink.close() for alpha, sink in sinks.items()}",
        "            return {alpha: {} for alpha in sinks}",
        GUARANTEES,
    ),
    "verify: 16x looser tolerance": (
        "verification.py",
        "        bad += int((~((error <= bound) | same)).sum())",
        "        bad += int((~((error <= 16 * bound) | same)).sum())",
        VERIFY,
    ),
    "verify: NaN accepted": (
        "verification.py",
        "(value.isnan() & ref.isnan())",
        "value.isnan()",
        VERIFY,
    ),
    "verify: integer tensors skipped": (
        "verification.py",
        "        bad += int(differ.sum())",
        "        bad += int(differ.sum()) if kept.is_floating_point() else 0",
        VERIFY,
    ),
    "verify: grown rows skipped": (
        "verification.py",
        "        bad += int(differ.sum())",
        "        bad += int(differ.sum()) if not kept.is_floating_point() else 0",
        VERIFY,
    ),
    "verify: stray shards ignored": (
        "verification.py",
        '        errors.append(f"{name}: not in the recorded shards")',
        "        pass",
        VERIFY,
    ),
    "verify: no checksums is fine": (
        "verification.py",
        '        return ["config.json records no shard checksums',
        '        return [][:0] or ["',
        VERIFY,
    ),
    "verify: missing shard not checked first": ("verification.py", "    if missing:", "    if False:", VERIFY),
    "float32 output nudged by 2 ulp": (
        "core/extrapolate.py",
        "            return torch.add(aligned, delta, alpha=self.alpha, out=out)",
        "            torch.add(aligned, delta, alpha=self.alpha, out=out)\n            inf = torch.full_like(out, "
        "float('inf'))\n            return out.copy_(torch.nextafter(torch.nextafter(out, inf), inf))",
        MERGE,
    ),
    "float32 through lerp": (
        "core/extrapolate.py",
        "        if sft.dtype == aligned.dtype == out.dtype and out.dtype in (torch.bfloat16, torch.float16):",
        "        if sft.dtype == aligned.dtype == out.dtype:",
        MERGE,
    ),
    "writer: bytes-short check removed": (
        "core/writer.py",
        '                    raise RuntimeError(f"{current.path}: {current.remaining} bytes short")',
        "                    pass",
        "tests/test_writer.py",
    ),
    "hub: branch-moved check removed": (
        "inputs/hub.py",
        "    if folder.name != remote.sha:",
        "    if False:",
        "tests/test_hub.py::test_a_branch_that_moves_between_validation_and_download_is_refused",
    ),
    "leftovers: liveness check removed": (
        "merging/staging.py",
        "        return _alive(pid)\n",
        "        return False\n",
        GUARANTEES,
    ),
    # expo tune, LoRA: what the new guarantees rest on.
    "tune: computed blocks land in a copy, not the parameter": (
        "core/sinks.py",
        "        return self.targets[t.name].view(-1)[start:stop]",
        "        return self.targets[t.name].view(-1)[start:stop].clone()",
        "tests/test_tune.py::test_candidate_parameters_are_bit_identical_to_the_merged_checkpoint",
    ),
    "tune: raw α = 0 blocks not copied into the model": (
        "core/sinks.py",
        "            target.view(torch.uint8).copy_(torch.frombuffer(data, dtype=torch.uint8))",
        "            pass",
        "tests/test_tune.py::test_candidate_parameters_are_bit_identical_to_the_merged_checkpoint",
    ),
    "tune: candidates not reseeded (differences between α no longer paired)": (
        "tuning/backends/generation.py",
        "        set_seed(self.decoding.seed + number)",
        "        pass",
        "tests/test_tune.py::test_the_same_seed_gives_the_same_responses_and_alpha_changes_them",
    ),
    "statistics: ties count as losses": (
        "tuning/decision/statistics.py",
        "np.where(candidate == baseline, 0.5, 0.0)",
        "np.where(candidate == baseline, 0.0, 0.0)",
        "tests/test_statistics.py",
    ),
    "lora: rslora scaled like plain LoRA": (
        "inputs/adapters.py",
        'alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank',
        "alpha / rank",
        "tests/test_lora.py::test_a_merged_adapter_matches_peft_in_float64",
    ),
    "lora: Conv1D factors not transposed": (
        "inputs/adapters.py",
        "            update = LowRank(update.a, update.b, update.scale, True, update.magnitude)  # GPT-2 Conv1D",
        "            pass",
        "tests/test_lora.py::test_a_merged_adapter_matches_peft_in_float64",
    ),
    "lora: a trained bias replaces instead of adding the LoRA bias": (
        "inputs/adapters.py",
        "            return base.to(wide) + scale * self.adapter.weights.flat(bias, start, stop).to(wide)",
        "            return base.to(wide)",
        "tests/test_lora.py::test_a_merged_adapter_matches_peft_in_float64",
    ),
    "lora: --as-adapter B factors not scaled": (
        "merging/adapter_output.py",
        '            against: TensorInfo | None = TensorInfo(key, "F32", info.shape, ZEROS)',
        "            against = None",
        "tests/test_lora.py::test_as_adapter_is_the_same_extrapolation_through_peft",
    ),
    # Issue "tests that catch the bugs": behaviour of the newer code that no test pinned before.
    "generation: the generation prompt left out": (
        "tuning/backends/generation.py",
        "add_generation_prompt=True",
        "add_generation_prompt=False",
        "tests/test_generation.py",
    ),
    "generation: a response not cut at its first end token": (
        "tuning/backends/generation.py",
        "    cut = next((i for i, token in enumerate(tokens) if token in eos), None)",
        "    cut = None",
        "tests/test_generation.py",
    ),
    "generation: tokens counted past the end token": (
        "tuning/backends/generation.py",
        "text, len(kept), ",
        "text, len(tokens), ",
        "tests/test_generation.py",
    ),
    "generation: every batch sampled with the same seed": (
        "tuning/backends/generation.py",
        "        set_seed(self.decoding.seed + number)",
        "        set_seed(self.decoding.seed)",
        "tests/test_generation.py",
    ),
    "rewards: BOS doubled for a tokenizer that adds one": (
        "tuning/objectives/rewards.py",
        "add_special_tokens=not self.templated",
        "add_special_tokens=True",
        "tests/test_rewards.py",
    ),
    "statistics: a 93% interval": (
        "tuning/decision/statistics.py",
        "        tail = round(100 * (1 - self.level) / 2, 9)",
        "        tail = round(100 * (1 - self.level) / 2 + 1, 9)",
        "tests/test_statistics.py",
    ),
    "statistics: the length change as a difference, not a ratio": (
        "tuning/decision/statistics.py",
        "length_change=mean_length / base_length - 1",
        "length_change=mean_length - base_length",
        "tests/test_statistics.py",
    ),
    "statistics: the longer-responses warning at another threshold": (
        "tuning/decision/selection.py",
        "    if chosen.length_change > LONGER:",
        "    if chosen.length_change > 3 * LONGER:",
        "tests/test_statistics.py",
    ),
    "search: a bracket narrower than the tolerance refined anyway": (
        "tuning/decision/search.py",
        "        if high - low < self.tolerance * max(1.0, abs(best)):",
        "        if False:",
        "tests/test_search.py",
    ),
    "search: no noise floor": (
        "tuning/decision/search.py",
        "        if self.indistinguishable and self.indistinguishable(best, max(",
        "        if False and self.indistinguishable(best, max(",
        "tests/test_search.py",
    ),
    # Issue "expo tune you can trust": held-out confirmation, resume, truncation, search stopping, RM scoring.
    "selection: the best qualifying α instead of the smallest": (
        "tuning/decision/selection.py",
        "    chosen = min(close, key=lambda s: s.alpha)",
        "    chosen = max(close, key=lambda s: s.reward.estimate)",
        "tests/test_statistics.py",
    ),
    # Issue 41: a newcomer's first hour.
    "hub: a mistyped path's Hub error not saying it was tried as a repo id": (
        "inputs/hub.py",
        '    tried = " (no local folder of that name: tried as a Hub repo id)" if action == "download" else ""',
        '    tried = ""',
        "tests/test_hub.py::test_hub_input_errors",
    ),
    "rewards: Ctrl-C inside a grader reported as the grader's error": (
        "tuning/objectives/rewards.py",
        "            except ExpoError:  # Ctrl-C while the grader ran",
        "            except ZeroDivisionError:  # Ctrl-C while the grader ran",
        "tests/test_tune_runs.py::test_ctrl_c_mid_candidate_says_where_the_work_is_kept_and_the_same_command_resumes",
    ),
    "sources: the usual short dtype names refused": (
        "core/sources.py",
        "    return None if name is None else DTYPE_ALIASES.get(name.lower(), name)",
        "    return name",
        "tests/test_cli.py",
    ),
    "rewards: no hint for a module name whose file is beside": (
        "tuning/objectives/usercode.py",
        "and as_file.is_file()",
        "and False",
        "tests/test_rewards.py",
    ),
    # Issue 35: a choice of α a reviewer would accept.
    "selection: no margin (the smallest α not significantly behind the best)": (
        "tuning/decision/selection.py",
        "    close = [s for s in better if s is best or s.behind_best.high <= allowed]",
        "    close = [s for s in better if s is best or s.behind_best.low <= 0]",
        "tests/test_statistics.py tests/test_selection.py",
    ),
    "selection: the margin judged by the estimate, not the interval": (
        "tuning/decision/selection.py",
        "s.behind_best.high <= allowed]",
        "s.behind_best.estimate <= allowed]",
        "tests/test_statistics.py tests/test_selection.py",
    ),
    "selection: always confirm": (
        "tuning/decision/selection.py",
        "        return self.stats is not None and self.stats.gain.low > 0",
        "        return self.stats is not None",
        "tests/test_selection.py",
    ),
    "looks: every look tested at 95%": (
        "tuning/decision/looks.py",
        "    return 1 - (1 - FIRST_LEVEL) / 2 ** (number - 1)",
        "    return FIRST_LEVEL",
        "tests/test_selection.py",
    ),
    "looks: another reward or other responses the same look": (
        "tuning/decision/looks.py",
        '            if record.get("alpha") == alpha and record.get("data") == data:',
        '            if record.get("alpha") == alpha:',
        "tests/test_selection.py " + LOOKS,
    ),
    "runfolder: --fresh forgets the looks": (
        "tuning/runs/runfolder.py",
        "            kept = {LOCK, LOOKS} if same_prompts else {LOCK}",
        "            kept = {LOCK}",
        LOOKS,
    ),
    "procedure: the held-out verdict by the selection's reward despite --confirm-reward": (
        "tuning/decision/procedure.py",
        "            pair = _compare(judging, split.confirmation,",
        "            pair = _compare(confirming, split.confirmation,",
        "tests/test_tune.py::test_a_second_reward_judges_the_held_out_prompts_and_shows_the_first_one_over_optimised",
    ),
    "statistics: the held-out gain by the percentile bootstrap": (
        "tuning/decision/statistics.py",
        "                gain=t_interval(gains_of, level) if paired_t else boot.mean(gains_of),",
        "                gain=boot.mean(gains_of),",
        "tests/test_statistics.py tests/test_selection.py",
    ),
    "statistics: the gain without cut answers keeps them": (
        "tuning/decision/statistics.py",
        "else _mean_over(boot, gains_of, kept),",
        "else _mean_over(boot, gains_of, np.ones_like(kept)),",
        "tests/test_statistics.py",
    ),
    "rewards: a response too long cut from the right with its template end": (
        "tuning/objectives/rewards.py",
        '        return ids[-limit:], "response"',
        '        return self._ids("", response)[:limit], "response"',
        "tests/test_rewards.py",
    ),
    "rewards: a response cut to fit counted as a prompt cut": (
        "tuning/objectives/rewards.py",
        '            return ids, "prompt"\n',
        '            return ids, "prompt"\n        return ids[:limit], "prompt"\n',
        "tests/test_rewards.py " + SHORT_CONTEXT,
    ),
    "api: a response that cannot fit the reward model not refused": (
        "tuning/api.py",
        "    if overhead + decoding.max_new_tokens > rm.max_length and not allow_cut_responses:",
        "    if False:",
        SHORT_CONTEXT,
    ),
    "rewards: a grader's imported helper not in its identity": (
        "tuning/objectives/usercode.py",
        "                    if resolved.is_file() and resolved.is_relative_to(root):",
        "                    if False:",
        "tests/test_rewards.py",
    ),
    "result: cut answers rising not a reason to refuse --output": (
        "tuning/runs/result.py",
        "        if rates[self.alpha] - rates[0.0] > CUT_RISE:",
        "        if False:",
        "tests/test_selection.py::test_a_choice_whose_answers_are_cut_far_more_often_is_not_written_and_says_so",
    ),
    "result: --force writes α = 0": (
        "tuning/runs/result.py",
        '        if self.alpha == 0:\n            return "no candidate',
        '        if self.alpha == 0 and not force:\n            return "no candidate',
        "tests/test_selection.py",
    ),
    "cli: an unwritten --output exits 0": (
        "cli/tune.py",
        "        raise NotWritten(",
        "        return out.warning(",
        "tests/test_tune.py::test_an_unconfirmed_choice_is_written_only_with_force",
    ),
    "statistics: significance from the marginal interval": (
        "tuning/decision/statistics.py",
        "        return self.gain_simultaneous.low > 0",
        "        return self.gain.low > 0",
        "tests/test_statistics.py tests/test_selection.py",
    ),
    "statistics: max-T without studentizing": (
        "tuning/decision/statistics.py",
        "    critical = float(np.quantile(scaled.max(axis=1), bootstrap.level))",
        "    critical = float(np.quantile(deviations.max(axis=1), bootstrap.level))",
        "tests/test_statistics.py",
    ),
    "statistics: prompts with a cut response kept in the length fit": (
        "tuning/decision/statistics.py",
        "        kept = ~(s.truncated.any(axis=1) | base.truncated.any(axis=1))",
        "        kept = np.ones(len(s.rewards), dtype=bool)",
        "tests/test_statistics.py",
    ),
    "procedure: the chosen α's gain confirmed on the selection prompts": (
        "tuning/decision/procedure.py",
        "                choice.alpha, len(split.confirmation), pair[1], look, pair[0],",
        "                choice.alpha, len(split.confirmation), stats[-1], look, pair[0],",
        "tests/test_selection.py",
    ),
    "search: α = 0's neighbour is itself": (
        "tuning/decision/search.py",
        "        neighbours = [tried[j] for j in (i - 1, i + 1) if 0 <= j < len(tried)]",
        "        neighbours = [tried[max(i - 1, 0)], tried[min(i + 1, len(tried) - 1)]]",
        "tests/test_search.py",
    ),
    "search: doubling without a noise check": (
        "tuning/decision/search.py",
        "            if self.indistinguishable and self.indistinguishable(best, tried[i - 1]):",
        "            if False:",
        "tests/test_search.py",
    ),
    "runfolder: a run with other settings resumed": (
        "tuning/runs/runfolder.py",
        "        if saved != key:",
        "        if False:",
        "tests/test_tune_runs.py",
    ),
    "runfolder: a torn last line left in the file": (
        "tuning/runs/runfolder.py",
        'fh.read(1))[1] != b"',
        'fh.read(1))[1] == b"',
        "tests/test_tune_runs.py::test_a_line_cut_short_by_a_crash_is_dropped_and_cut_off_by_the_next_append",
    ),
    "evaluation: kept batches generated again": (
        "tuning/runs/evaluation.py",
        "                if number not in made:",
        "                if True:",
        "tests/test_tune_runs.py",
    ),
    "rewards: EOS as the pad id when pooling": (
        "tuning/objectives/rewards.py",
        "            config.pad_token_id = pad  # pooling",
        "            config.pad_token_id = self.tokenizer.eos_token_id  # pooling",
        "tests/test_rewards.py",
    ),
    "rewards: a long conversation cut from the right": (
        "tuning/objectives/rewards.py",
        "            prompt_ids = prompt_ids[len(ids) - limit :]",
        "            prompt_ids = []",
        "tests/test_rewards.py",
    ),
    "prompts: --limit takes the first N": (
        "tuning/decision/holdout.py",
        "    return sorted(np.random.default_rng(seed).choice(count, size=limit, replace=False).tolist())",
        "    return list(range(limit))",
        "tests/test_prompts.py",
    ),
    "generation: a cut response marked as ended": (
        "tuning/backends/generation.py",
        '"length" if cut is None else "stop"',
        '"stop"',
        "tests/test_generation.py",
    ),
    # Issue "see what α does": the report's page.
    "report: a response inserted as markup": (
        "tuning/runs/reporting/page.js",
        "    body.textContent = sample.text;",
        "    body.innerHTML = sample.text;",
        "tests/test_report.py::test_a_hostile_response_renders_as_text",
    ),
    "report: sorted by gain when asked for the spread": (
        "tuning/runs/reporting/page.js",
        "  spread: (a, b) => b.spread - a.spread,",
        "  spread: (a, b) => b.gain - a.gain,",
        "tests/test_report.py::test_sorting_and_filtering_change_what_is_shown",
    ),
    # Issue "LoRA inputs never silently wrong".
    "lora: a square Conv1D oriented by the saved flag": (
        "inputs/adapters.py",
        "(not plain or _is_conv1d(adapter, base, name, where))",
        '(not plain or adapter.config.get("fan_in_fan_out"))',
        "tests/test_lora.py::test_a_square_conv1d_layer_is_oriented_by_the_architecture_not_the_saved_flag",
    ),
    "lora: patterns always read as PEFT 0.15 reads them": (
        "inputs/lora_patterns.py",
        "    rule = rule_of(config)\n",
        '    rule = "0.15"\n',
        "tests/test_lora.py::test_up_to_peft_0_13_one_key_chose_both_the_rank_and_the_alpha",
    ),
    "lora: LoRA-GA taken for a plain initialisation": (
        "inputs/lora_features.py",
        '"loftq", "lora_ga")',
        '"loftq")',
        "tests/test_lora.py::test_every_feature_peft_merges_otherwise_is_refused_by_name_before_any_work",
    ),
    "lora: two adapters on one base always taken as continued": (
        "inputs/stacking.py",
        "        if similarity is not None and similarity >= CONTINUED:",
        "        if True:",
        "tests/test_lora.py::test_two_adapters_on_the_same_base_are_told_apart_by_their_factors",
    ),
    "lora: a combined adapter keeps the aligned config's layer filter": (
        "merging/adapter_output.py",
        '                "layers_to_transform": None,\n',
        "",
        "tests/test_lora.py::test_a_combined_continued_stack_names_exactly_the_modules_it_holds",
    ),
    "lora: a LoRA on a tied head applied to the head alone": (
        "inputs/adapters.py",
        "    _tie(adapter, base, where)\n",
        "",
        "tests/test_lora.py::test_a_lora_on_a_tied_head_changes_the_one_shared_parameter_as_peft_merges_it",
    ),
    "lora: a DoRA module without its magnitude merged as plain LoRA": (
        "inputs/adapters.py",
        '        if adapter.dora and "m" not in found:',
        "        if False:",
        "tests/test_lora.py::test_what_expo_cannot_read_is_named_for_what_it_is",
    ),
    "runfolder: no lock, two tunes append to one folder": (
        "tuning/runs/runfolder.py",
        "        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)",
        "        pass",
        "tests/test_tune_runs.py::test_a_run_folder_in_use_is_refused_and_released_when_done",
    ),
    "report: a result.json of another version rendered anyway": (
        "tuning/runs/reporting/__init__.py",
        "        if version != VERSION:",
        "        if False:",
        "tests/test_report.py::test_report_errors_are_one_line",
    ),
    "statistics: the length interval of the baseline's lengths": (
        "tuning/decision/statistics.py",
        "length_interval=boot.mean(s.prompt_lengths)",
        "length_interval=boot.mean(base.prompt_lengths)",
        "tests/test_statistics.py",
    ),
    "profile: a stage counts the stages nested in it": (
        "core/profile.py",
        "        if stack:  # the enclosing stage pauses\n            self._flush(stack[-1], now, cpu)\n",
        "",
        "tests/test_merge.py::test_a_profile_stage_excludes_the_stages_nested_in_it",
    ),
    "profile: the writer's time not recorded": (
        "core/writer.py",
        '                    with profiling.stage("write"):\n                        n = current.write(view)',
        "                    if True:\n                        n = current.write(view)",
        "tests/test_merge.py::test_a_profile_accounts_for_the_merge_by_stage_and_thread_and_changes_no_byte",
    ),
    "lora: a tied config taken for an untied one": (
        "inputs/adapters.py",
        '    return bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", True)))',
        "    return False",
        "tests/test_lora.py::test_a_tied_checkpoint_storing_its_head_twice_gets_both_copies_updated",
    ),
    "lora: --as-adapter scales A instead of B": (
        "merging/adapter_output.py",
        'B_FACTORS = (".lora_B.weight", ".lora_embedding_B", ".lora_B.bias")',
        'B_FACTORS = (".lora_A.weight", ".lora_embedding_A", ".lora_B.bias")',
        "tests/test_lora.py::test_as_adapter_copies_lora_a_bit_for_bit_and_scales_only_b",
    ),
    "lora: a continued rsLoRA stack keeps use_rslora in its config": (
        "merging/adapter_output.py",
        '                "use_rslora": False,\n',
        "",
        "tests/test_lora.py::test_a_continued_rslora_stack_as_adapter_gives_peft_the_intended_update",
    ),
    "parts: finishing takes a shard of the wrong size": (
        "merging/execution.py",
        "and (not path.is_file() or path.stat().st_size != shard.size)",
        "and not path.is_file()",
        "tests/test_parts.py::test_a_shard_of_the_wrong_size_is_refused_when_finishing",
    ),
    "stream: the writer goes on after a failed upload": (
        "merging/upload.py",
        "        self._idle.acquire()\n        if self._error is not None:",
        "        self._idle.acquire()\n        if False:",
        "tests/test_hub.py::test_a_failed_upload_stops_the_writer_before_the_scratch_fills",
    ),
    "side files: tokenizer.json not copied": (
        "merging/sidefiles.py",
        '    "tokenizer.json",\n',
        "",
        "tests/test_merge.py::test_config_card_and_files_of_the_aligned_model",
    ),
    "side files: an adapter merge borrows nothing from its base": (
        "merging/planning.py",
        "            sidefiles.borrow(side, fallback)",
        "            pass",
        "tests/test_lora.py::test_an_adapter_merge_carries_its_bases_loader_files",
    ),
    # Hub streaming through a real network, and the walk that feeds it.
    "walk: one block announced ahead whatever a source asks": (
        "core/streaming.py",
        '    depth = max(1, getattr(sft, "read_ahead", 1), getattr(aligned, "read_ahead", 1))',
        "    depth = 1",
        "tests/test_streaming.py::test_the_walk_announces_as_many_blocks_ahead_as_a_source_asks",
    ),
    "walk: nothing announced ahead": (
        "core/streaming.py",
        "            _prefetch(item[0], sft, aligned, item[1], item[2])",
        "            pass",
        "tests/test_streaming.py::test_the_walk_announces_as_many_blocks_ahead_as_a_source_asks",
    ),
    "ranged: 503 and 429 not retried": (
        "inputs/retry.py",
        "    return status in RETRIED_STATUSES or status >= 500",
        "    return False",
        "tests/test_hub.py::test_a_streamed_merge_through_network_faults_gives_the_bytes_of_a_local_merge",
    ),
    "ranged: a retry asks again for what already arrived": (
        "inputs/range_client.py",
        "                received += err.received\n",
        "",
        "tests/test_hub.py::test_a_streamed_merge_through_network_faults_gives_the_bytes_of_a_local_merge",
    ),
    "ranged: read-ahead past its memory budget": (
        "inputs/ranged.py",
        "            if self._in_flight + end - begin > self.budget:",
        "            if False:",
        "tests/test_hub.py::test_blocks_announced_beyond_the_budget_are_read_ahead_once_it_has_room",
    ),
    "ranged: adjacent small blocks never coalesced": (
        "inputs/ranged.py",
        "(following := self._announced[0])[0] == file and following[1] == end:",
        "(following := self._announced[0])[0] == file and False:",
        "tests/test_hub.py::test_adjacent_small_blocks_ride_in_one_request_while_the_connections_are_busy",
    ),
    "ranged: a block announced beyond the budget never read ahead": (
        "inputs/ranged.py",
        "                self._in_flight -= key[2] - key[1]\n                self._start()\n",
        "                self._in_flight -= key[2] - key[1]\n",
        "tests/test_hub.py::test_blocks_announced_beyond_the_budget_are_read_ahead_once_it_has_room",
    ),
    "ranged: a receive buffer used again while a block still refers to it": (
        "inputs/ranged.py",
        "if count == ALONE}",
        "if count >= ALONE}",
        "tests/test_hub.py::test_receive_buffers_are_used_again_only_once_nothing_refers_to_them "
        "tests/test_hub.py::test_a_streamed_merge_through_network_faults_gives_the_bytes_of_a_local_merge",
    ),
    "ranged: receive buffers kept beyond their limit": (
        "inputs/ranged.py",
        "            if self.kept_bytes + len(found) <= self.limit:",
        "            if True:",
        "tests/test_hub.py::test_receive_buffers_are_used_again_only_once_nothing_refers_to_them",
    ),
    "network report: read seconds not measured": (
        "inputs/ranged.py",
        "        self.reading[1] = max(self.reading[1], time.monotonic())\n",
        "",
        "tests/test_hub.py::test_a_stalled_connection_is_timed_out_and_retried",
    ),
    "ranged: a coalesced block served from the wrong offset": (
        "inputs/ranged.py",
        "data = request.future.result()[key[1] - request.begin : key[2] - request.begin]",
        "data = request.future.result()[: key[2] - key[1]]",
        "tests/test_hub.py::test_adjacent_small_blocks_ride_in_one_request_while_the_connections_are_busy",
    ),
    "range client: no timeout on a stalled connection": (
        "inputs/range_client.py",
        "        self.timeout = timeout if timeout is not None else constants.HF_HUB_DOWNLOAD_TIMEOUT",
        "        self.timeout = None",
        "tests/test_hub.py::test_a_stalled_connection_is_timed_out_and_retried",
    ),
    "range client: the token sent to the CDN": (
        "inputs/range_client.py",
        '            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}',
        "            pass",
        "tests/test_hub.py::test_signed_urls_are_asked_for_again_when_they_expire_and_never_get_the_token",
    ),
    "range client: an expired signed URL not asked for again": (
        "inputs/range_client.py",
        "                self.locate(name, again=True)\n                raise Transient(",
        "                raise Transient(",
        "tests/test_hub.py::test_signed_urls_are_asked_for_again_when_they_expire_and_never_get_the_token",
    ),
    "profile: a fixed thread column that long thread names overflow": (
        "cli/merge.py",
        '    width = max([len("thread"), *(len(s["thread"]) for s in profile["stages"])]) + 2',
        "    width = 14",
        "tests/test_merge.py::test_the_profile_table_keeps_its_columns_whatever_the_thread_names",
    ),
    "range client: certificates not verified": (
        "inputs/range_client.py",
        "                    self._managers[proxy] = urllib3.PoolManager(**pools)",
        "                    self._managers[proxy] = urllib3.PoolManager(cert_reqs='CERT_NONE', **pools)",
        "tests/test_hub.py::test_a_streamed_merge_over_https_verifies_the_certificate",
    ),
    "range client: a certificate not trusted retried as if transient": (
        "inputs/range_client.py",
        "            if isinstance(cause, ssl.SSLCertVerificationError):  # no retry changes a certificate",
        "            if False:",
        "tests/test_hub.py::test_a_streamed_merge_over_https_verifies_the_certificate",
    ),
    "range client: the proxy ignored": (
        "inputs/range_client.py",
        "        proxy = proxy_for(url)\n",
        "        proxy = None\n",
        "tests/test_hub.py::test_ranged_reads_go_through_the_proxy_the_environment_names",
    ),
    "range client: a range starting elsewhere accepted": (
        "inputs/range_client.py",
        "        if first != begin:",
        "        if False:",
        "tests/test_hub.py::test_a_server_that_answers_another_range_is_refused",
    ),
    "commit: a refusal for now not retried": (
        "merging/upload.py",
        "            if not again or failures >= retry.ATTEMPTS:",
        "            if True:",
        "tests/test_hub.py::test_the_commit_that_ends_a_stream_is_made_once_however_its_answers_are_lost",
    ),
    "commit: sent again after its answer was lost, without looking": (
        "merging/upload.py",
        "                if (published := _published(client, repo_id, operations, now, branch, create_pr, before)) is "
        "not None:",
        "                if False:",
        "tests/test_hub.py::test_the_commit_that_ends_a_stream_is_made_once_however_its_answers_are_lost",
    ),
    "commit: a finished publish made again": (
        "merging/upload.py",
        "        if (published := _published(client, repo_id, operations, before, branch, create_pr, None))"
        " is not None:",
        "        if False:",
        "tests/test_hub.py::test_the_commit_that_ends_a_stream_is_made_once_however_its_answers_are_lost",
    ),
    "commit: not pinned to the head it builds on": (
        "merging/upload.py",
        '                    parent_commit=before.get(f"refs/heads/{branch}"),',
        "                    parent_commit=None,",
        "tests/test_hostile_hub.py::test_a_commit_never_lands_on_top_of_one_made_meanwhile",
    ),
    "limits: a config or index of any size read whole": (
        "inputs/headers.py",
        '    if size > limit:\n        raise InputError(f"{file}: {size} bytes, more than such a file may be',
        '    if False:\n        raise InputError(f"{file}: {size} bytes, more than such a file may be',
        "tests/test_hostile_hub.py::test_oversized_config_and_index_are_refused_from_the_listing",
    ),
    "hostile folder: a link out of the folder copied": (
        "fsutil.py",
        "    if not any(target.is_relative_to(root) for root in roots):",
        "    if False:",
        "tests/test_hostile_folders.py::test_a_link_out_of_the_folder_is_never_copied_into_the_output_or_pushed",
    ),
    "hostile folder: push follows links": (
        "merging/upload.py",
        "        path = contained_file(folder, relative, limit=None)  # a link out of the folder is never published",
        "        path = folder / relative",
        "tests/test_hostile_folders.py::test_a_link_out_of_the_folder_is_never_copied_into_the_output_or_pushed",
    ),
    "hostile folder: no size limit on a side file": (
        "fsutil.py",
        "    if limit is not None and found.st_size > limit:",
        "    if False:",
        "tests/test_hostile_folders.py::test_a_huge_side_file_is_refused_before_any_work",
    ),
    "hostile folder: --stream downloads every side file": (
        "merging/planning.py",
        "    folder = download(aligned, opts.token, weights=False, side=side, skip=opts.skip)\n    fetched",
        "    folder = download(aligned, opts.token, weights=False)\n    fetched",
        "tests/test_hostile_folders.py::test_a_streamed_merge_fetches_only_the_files_its_output_carries",
    ),
    "hostile folder: listed sizes not checked": (
        "inputs/hub.py",
        "        if listed.size > MAX_SIDE_FILE_BYTES and _matches(name, side) and not _matches(name, skip):",
        "        if False:",
        "tests/test_hostile_folders.py::test_a_streamed_merge_fetches_only_the_files_its_output_carries",
    ),
    "bounded waits: Retry-After not capped": (
        "inputs/retry.py",
        "    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)",
        "    return max(seconds, 0.0)",
        "tests/test_hostile_hub.py::test_retry_after_is_read_strictly_and_capped",
    ),
    "bounded waits: a byte of progress resets the failures": (
        "inputs/range_client.py",
        "        failures = 1 if isinstance(failure, Transient) and failure.progressed else failures + 1",
        "        failures = 1 if isinstance(failure, Transient) and failure.received else failures + 1",
        "tests/test_hostile_hub.py::test_a_server_that_sends_a_byte_and_hangs_up_is_given_up_per_block",
    ),
    "bounded waits: no block deadline": (
        "inputs/range_client.py",
        "        deadline = deadline if deadline is not None else time.monotonic() + retry.BLOCK_SECONDS",
        "        deadline = None",
        "tests/test_hostile_hub.py::test_a_server_that_sends_a_byte_and_hangs_up_is_given_up_per_block",
    ),
    "bounded waits: no run budget": (
        "inputs/retry.py",
        "    budget().take(seconds, what)",
        "    pass",
        "tests/test_hostile_hub.py::test_the_run_waits_at_most_its_retry_budget",
    ),
    "bounded waits: a dripping body never cut": (
        "inputs/range_client.py",
        "        watched = WATCHDOG.watch(sock, deadline) if sock is not None else None",
        "        watched = None",
        "tests/test_hostile_hub.py::test_a_dripping_body_is_cut_and_a_malformed_retry_after_is_ignored",
    ),
    "integrity: streamed inputs not verified before the commit": (
        "merging/execution.py",
        "                source.verify()  # every byte computed from matches the Hub's listing, or nothing"
        " is committed",
        "                pass",
        "tests/test_hostile_hub.py::test_bytes_changed_on_the_way_are_caught_before_the_commit",
    ),
    "integrity: a block used twice not compared": (
        "inputs/integrity.py",
        "                    if self._used.pop(block) != hashlib.sha256(data[block[0] - begin : block[1] -"
        " begin]).digest():",
        "                    if self._used.pop(block) and False:",
        "tests/test_hostile_hub.py::test_a_file_digest_fed_in_any_order_checks_exactly_the_bytes_used",
    ),
    "integrity: a re-read block not compared": (
        "inputs/integrity.py",
        "        if self._used.pop(block) != hashlib.sha256(data).digest():",
        "        if self._used.pop(block) and False:",
        "tests/test_hostile_hub.py::test_a_file_digest_fed_in_any_order_checks_exactly_the_bytes_used",
    ),
    "integrity: a small file's hash not compared": (
        "inputs/integrity.py",
        "    if len(data) != listed.size or hasher.hexdigest() != listed.expected:",
        "    if len(data) != listed.size:",
        "tests/test_hostile_hub.py::test_a_small_file_is_checked_whole_against_its_listed_hash",
    ),
    "integrity: an https to http redirect followed": (
        "inputs/range_client.py",
        '        if urlsplit(url).scheme == "https" and target.scheme != "https":',
        "        if False:",
        "tests/test_hostile_hub.py::test_a_redirect_from_https_to_http_is_refused",
    ),
    "integrity: an answer naming no commit accepted": (
        "inputs/range_client.py",
        "        if metadata.commit_hash != self.sha:  # every answer names the commit it is from: the validated one",
        "        if metadata.commit_hash not in (None, self.sha):",
        "tests/test_hostile_hub.py::test_an_answer_that_names_no_commit_is_refused",
    ),
    "integrity: a remote index's shard names not checked": (
        "inputs/remote.py",
        '            weight_map = parse_index(reader.label(SAFETENSORS_INDEX_FILE), raw, ".safetensors")',
        '            weight_map = __import__("json").loads(raw)["weight_map"]',
        "tests/test_hostile_hub.py::test_an_index_naming_files_outside_the_repo_is_refused_before_any_request_for_them",
    ),
    "integrity: a gap between tensors accepted": (
        "inputs/headers.py",
        "        if info.offset > end:",
        "        if False:",
        "tests/test_hostile_hub.py::test_remote_headers_get_the_verdict_of_local_ones",
    ),
    "integrity: downloaded weights not hashed": (
        "inputs/resolve.py",
        "        check_snapshot(path, [f.name for f in views[role].weight_files], remote[role].listed)",
        "        pass",
        "tests/test_hostile_hub.py::test_downloaded_weights_are_checked_against_the_listed_sha256_once",
    ),
    "run folder: close αs share a file": (
        "tuning/runs/runfolder.py",
        '        return root / part / f"alpha={alpha!r}.jsonl"',
        '        return root / part / f"alpha={alpha:g}.jsonl"',
        "tests/test_tune_runs.py::test_close_alphas_never_share_a_file_and_a_foreign_or_corrupt_line_is_one_error",
    ),
    "run folder: a line of another α accepted": (
        "tuning/runs/runfolder.py",
        '            if not isinstance(line, dict) or line.get("alpha") != alpha or line.get("part") != part:',
        "            if not isinstance(line, dict):",
        "tests/test_tune_runs.py::test_close_alphas_never_share_a_file_and_a_foreign_or_corrupt_line_is_one_error",
    ),
    "run folder: a corrupt line a traceback": (
        "tuning/runs/runfolder.py",
        "    return json_lines(text, corrupt)",
        '    return [(n, json.loads(line)) for n, line in enumerate(text.split("\\n"), 1) if line.strip()]',
        "tests/test_tune_runs.py::test_a_corrupt_run_folder_line_ends_tune_in_one_line",
    ),
    "lines: split on U+2028 too": (
        "lines.py",
        'enumerate(text.split("\\n"), 1)',
        "enumerate(text.splitlines(), 1)",
        "tests/test_report.py::test_a_responses_file_holding_line_separators_in_its_text_is_read_back "
        "tests/test_tune_runs.py::test_a_corrupt_run_folder_line_ends_tune_in_one_line",
    ),
    "proxies: ALL_PROXY ignored": (
        "inputs/range_client.py",
        '    proxy = proxies.get(parts.scheme) or proxies.get("all")',
        "    proxy = proxies.get(parts.scheme)",
        "tests/test_hub.py::test_ranged_reads_go_through_the_proxy_the_environment_names",
    ),
    "proxies: the proxy's credentials not sent": (
        "inputs/range_client.py",
        "                        headers = urllib3.util.make_headers(proxy_basic_auth=credentials)",
        "                        headers = {}",
        "tests/test_hostile_hub.py::test_an_https_proxy_is_spoken_to_over_tls_with_its_credentials",
    ),
    "scratch shards: every output left unsynced": (
        "merging/execution.py",
        "ShardSink(folder, shards, pool, closed, transient=uploader is not None)",
        "ShardSink(folder, shards, pool, closed, transient=True)",
        GUARANTEES,
    ),
    "network report: the inputs read over the network not found": (
        "merging/execution.py",
        "    return [s for s in (weights.sft, weights.aligned) if isinstance(s, RangedSource)]",
        "    return []",
        "tests/test_hub.py::test_a_stalled_connection_is_timed_out_and_retried",
    ),
    "progress: no network rates": (
        "merging/execution.py",
        "                status = transfer_status(weights, uploader)",
        "                status = None",
        "tests/test_hub.py::test_signed_urls_are_asked_for_again_when_they_expire_and_never_get_the_token",
    ),
    "scratch: a missing folder not created": (
        "fsutil.py",
        "            parent.mkdir()",
        "            pass",
        "tests/test_hub.py::test_a_streamed_merge_through_network_faults_gives_the_bytes_of_a_local_merge",
    ),
    "stream: shards queue for upload without bound": (
        "merging/upload.py",
        "        self._idle.acquire()\n",
        "",
        "tests/test_hub.py::test_a_failed_upload_stops_the_writer_before_the_scratch_fills",
    ),
    "parallel streams: an abort is told instead of the failure": (
        "merging/execution.py",
        "        raise next((e for e in failures if not isinstance(e, Aborted)), failures[0])",
        "        raise failures[0]",
        "tests/test_merge.py::test_a_failure_in_any_stream_stops_them_all_and_writes_nothing",
    ),
    "parallel streams: the last run of shards dropped": (
        "merging/execution.py",
        "    return groups\n",
        "    return groups[:-1] if len(groups) > 1 else groups\n",
        "tests/test_merge.py::test_parallel_shard_streams_write_the_bytes_of_one_stream",
    ),
    "headers validated by safetensors for torch (imports it before the plan)": (
        "inputs/headers.py",
        'with safe_open(file, framework="numpy"):',
        'with safe_open(file, framework="pt"):',
        "tests/test_inputs.py::test_headers_are_read_validated_and_paired_before_torch_is_imported",
    ),
    "--stream writes several shards at once (the scratch bound broken)": (
        "merging/planning.py",
        '    if opts.stream or getattr(device, "type", "cpu") == "cuda":',
        '    if getattr(device, "type", "cpu") == "cuda":',
        "tests/test_hub.py::test_hub_to_hub_streaming_with_a_scratch_smaller_than_an_input",
    ),
    # expo tune --backend vllm: run by the vLLM environment's Python (`make setup-vllm`).
    "vLLM: sampling seeded per batch, not per response": (
        "tuning/backends/serving.py",
        "seed=request_seed(d.seed, prompt, sample)",
        "seed=request_seed(d.seed + number, prompt, sample)",
        f"{VLLM}tests/test_vllm.py::test_sampling_is_seeded_per_response_whatever_the_batches",
    ),
    "vLLM: prefix cache kept across α": (
        "tuning/backends/serving.py",
        "        self.llm.reset_prefix_cache()\n",
        "",
        f"{VLLM}tests/test_vllm.py::test_in_place_updates_generate_what_the_merged_checkpoints_do",
    ),
    "vLLM: per-tensor rules ignored": (
        "tuning/backends/serving.py",
        "alphas = self.run.alphas(alpha, self.run.main.pairing)",
        "alphas = {t.name: alpha for t in self.run.main.pairing.tensors}",
        f"{VLLM}tests/test_vllm.py::test_a_float32_run_with_a_per_tensor_rule_is_exact_too",
    ),
    "vLLM: the last group of tensors not reloaded": (
        "tuning/backends/vllm_worker.py",
        "        for group in _groups(weights.pairing.tensors):",
        "        for group in list(_groups(weights.pairing.tensors))[:-1]:",
        f"{VLLM}tests/test_vllm.py::test_in_place_updates_generate_what_the_merged_checkpoints_do",
    ),
    "vLLM: an unknown architecture reaches the engine": (
        "tuning/backends/serving.py",
        "        _check_architecture(vllm, config, model_folder)\n",
        "",
        f"{VLLM}tests/test_vllm.py::test_vllm_errors_are_one_line_before_any_generation",
    ),
    # A newcomer's first hour (issue 41): messages that say the next step.
    "swapped inputs not refused": (
        "merging/planning.py",
        "        if reason := swapped(*named):",
        "        if (reason := swapped(*named)) and False:",
        "tests/test_publish.py::test_swapped_inputs_are_refused_when_their_metadata_says_so",
    ),
    "a claim naming both inputs counts as evidence": (
        "merging/direction.py",
        "if other.is_named(n) and not self.is_named(n)",
        "if other.is_named(n)",
        "tests/test_publish.py::test_metadata_naming_both_inputs_alike_is_no_evidence",
    ),
    "verify: no hint of the recorded α": (
        "verification.py",
        "    if recorded_alpha is not None and recorded_alpha != alpha:",
        "    if False:",
        "tests/test_verify.py::test_a_failed_check_says_what_the_provenance_records",
    ),
    "verify: swapped inputs not told apart from foreign ones": (
        "verification.py",
        '        if (given["sft"], given["aligned"]) == (names["aligned"], names["sft"]):',
        "        if False:",
        "tests/test_verify.py::test_a_failed_check_says_what_the_provenance_records",
    ),
    "verify: a sweep's folder read as a checkpoint": (
        "verification.py",
        "(outputs := _sweep_outputs(folder))",
        "(outputs := [])",
        "tests/test_verify.py::test_a_sweeps_folder_or_a_missing_one_is_named_with_what_to_pass",
    ),
    "inspect warns on the whole-model ratio": (
        "inspection.py",
        "    elif matrix_change > LARGE_CHANGE:",
        "    elif relative > LARGE_CHANGE:",
        "tests/test_inspect.py",
    ),
    "inspect's matrices include the vectors": (
        "inspection.py",
        "            len(t.aligned.shape) >= 2,",
        "            len(t.aligned.shape) >= 1,",
        "tests/test_inspect.py",
    ),
    "inspect's summary names --dtype as typed": (
        "inspection.py",
        "dtype_name(out_code) if out_code else pairing.dominant_dtype()",
        "dtype if out_code else pairing.dominant_dtype()",
        "tests/test_inspect.py",
    ),
    "report browser compares α = 0 with itself": (
        "tuning/runs/reporting/page.js",
        "  const other = data.compared;",
        "  const other = data.chosen in prompt.reward ? data.chosen : data.compared;",
        "tests/test_report.py",
    ),
    "report verdict from the selection prompts when some were held out": (
        "tuning/runs/reporting/__init__.py",
        '    if stats and stats.get("gain") and stats.get("win_rate"):',
        "    if False:",
        "tests/test_examples.py",
    ),
    "next steps: a wider grid never suggested": (
        "tuning/runs/advice.py",
        "    if result.alpha == grid[-1]:",
        "    if False:",
        "tests/test_examples.py",
    ),
    "next steps: verify suggested for an unwritten output": (
        "tuning/runs/advice.py",
        "    if output and refused is None:",
        "    if output:",
        "tests/test_tune.py::test_an_unconfirmed_choice_is_written_only_with_force",
    ),
    "rounding noise printed as a gain": (
        "tuning/decision/statistics.py",
        "    return 0.0 if abs(value) < NOISE else value",
        "    return value",
        "tests/test_statistics.py",
    ),
    "a sweep repeats the bytes read per output": (
        "cli/merge.py",
        "    if len(results) == 1:",
        "    if True:",
        "tests/test_cli.py",
    ),
    "push says Uploading before checking the folder": (
        "cli/push.py",
        "    return expo_cli.push(",
        '    None if quiet else out.info(f"Uploading {folder} to {hub.repo_id}")\n    return expo_cli.push(',
        "tests/test_cli.py",
    ),
    "help options ungrouped": (
        "cli/_help.py",
        '                panel = getattr(param, "rich_help_panel", None) or GENERAL',
        "                panel = GENERAL",
        "tests/test_cli.py",
    ),
    "help keeps Typer's [default: X]": (
        "cli/_help.py",
        "                panels.setdefault(panel, []).append((record[0], one_default_style(record[1])))",
        "                panels.setdefault(panel, []).append(record)",
        "tests/test_publish.py::test_help_reads_right",
    ),
    # vLLM updates proven whole (issue 40).
    "vllm: a tied head keeps its packed copy": (
        "tuning/backends/vllm_worker.py",
        "        for module in _sharing_without_loading(model, loaded):",
        "        for module in []:",
        f"{VLLM}tests/test_vllm.py::test_a_tied_embedding_model_answers_as_its_merged_checkpoint_after_every_update",
    ),
    "vllm: an incomplete update accepted": (
        "tuning/backends/vllm_worker.py",
        "        if missing:",
        "        if False:",
        f"{VLLM}tests/test_vllm.py::test_an_incomplete_or_overflowing_update_is_refused_and_fences_the_engine",
    ),
    "vllm: a failed update does not fence the engine": (
        "tuning/backends/serving.py",
        "        if self.fenced:",
        "        if False:",
        f"{VLLM}tests/test_vllm.py::test_an_incomplete_or_overflowing_update_is_refused_and_fences_the_engine",
    ),
    "vllm: the run key ignores vLLM's version": (
        "tuning/api.py",
        '            "version": vllm_version(),\n',
        "",
        f"{VLLM}tests/test_vllm.py::test_tune_on_vllm_end_to_end_with_a_reward_model_then_a_reward_function",
    ),
    "an α float32 cannot hold accepted": (
        "alpha.py",
        "    if abs(alpha) > FLOAT32_MAX:",
        "    if False:",
        "tests/test_errors.py",
    ),
    # Realistic bugs in the last wave's code (issue 36): each once survived the whole suite.
    "range reads: same origin judged by host alone": (
        "inputs/range_client.py",
        "    return (one.scheme, one.hostname, one.port) == (two.scheme, two.hostname, two.port)",
        "    return one.hostname == two.hostname",
        "tests/test_hostile_hub.py::test_the_token_goes_only_to_the_hubs_own_scheme_host_and_port",
    ),
    "range reads: TLS host name not verified": (
        "inputs/range_client.py",
        "                    self._managers[proxy] = urllib3.PoolManager(**pools)",
        "                    self._managers[proxy] = urllib3.PoolManager(**pools, assert_hostname=False)",
        "tests/test_hostile_hub.py::test_a_certificate_for_another_host_name_is_refused",
    ),
    "range reads: NO_PROXY ignored": (
        "inputs/range_client.py",
        '    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):',
        "    if not proxy:",
        "tests/test_hostile_hub.py::test_proxy_urls_are_read_as_the_ecosystem_reads_them",
    ),
    "held out confirmed by its estimate": (
        "tuning/decision/selection.py",
        "        return self.stats is not None and self.stats.gain.low > 0",
        "        return self.stats is not None and self.stats.gain.estimate > 0",
        "tests/test_selection.py",
    ),
    "an interval that cannot be computed written as NaN": (
        "tuning/decision/statistics.py",
        "        return None if any(isinstance(v, float) and np.isnan(v) for v in value.values()) else value",
        "        return value",
        "tests/test_statistics.py",
    ),
    "finish reasons lost in the records": (
        "tuning/runs/result.py",
        '                "finish": response.finish,',
        '                "finish": "stop",',
        "tests/test_tune.py::test_cut_answers_stay_cut_in_every_file_tune_writes",
    ),
    "--fresh empties the lock it holds": (
        "tuning/runs/runfolder.py",
        "            kept = {LOCK, LOOKS} if same_prompts else {LOCK}",
        "            kept = {LOOKS} if same_prompts else set()",
        "tests/test_tune_runs.py::test_a_run_folder_in_use_is_refused_and_released_when_done",
    ),
    "report: length sort signed": (
        "tuning/runs/reporting/page.js",
        "  length: (a, b) => Math.abs(b.lengthChange) - Math.abs(a.lengthChange),",
        "  length: (a, b) => b.lengthChange - a.lengthChange,",
        "tests/test_report.py::test_the_length_sort_puts_the_largest_change_either_way_first",
    ),
    "report: names not escaped": (
        "tuning/runs/reporting/__init__.py",
        "    environment = Environment(autoescape=True, keep_trailing_newline=True)",
        "    environment = Environment(autoescape=False, keep_trailing_newline=True)",
        "tests/test_report.py::test_every_name_on_the_page_is_text_not_markup",
    ),
    "LoRA: base-rewriting inits matched exactly": (
        "inputs/lora_features.py",
        "    return isinstance(value, str) and value.lower().startswith(BASE_REWRITING_INITS)",
        "    return isinstance(value, str) and value.lower() in BASE_REWRITING_INITS",
        "tests/test_lora.py::test_bad_adapters_give_one_line_and_no_output",
    ),
    "LoRA: PEFT versions compared by minor only": (
        "inputs/lora_patterns.py",
        "    if (major, minor) >= (0, 15):",
        "    if minor >= 15:",
        "tests/test_lora.py::test_the_pattern_rule_follows_the_saving_peft_version_and_never_goes_back",
    ),
    "LoRA: a pattern key's alternatives ungrouped": (
        "inputs/lora_patterns.py",
        '            return re.match(rf"(.*\\.)?({key})$", module) is not None',
        '            return re.match(rf"(.*\\.)?{key}$", module) is not None',
        "tests/test_lora.py::test_a_pattern_key_with_alternatives_matches_only_whole_module_names",
    ),
    "search: degeneration needs both signs": (
        "tuning/decision/procedure.py",
        "> DEGENERATE or candidate.repetition",
        "> DEGENERATE and candidate.repetition",
        "tests/test_search.py::test_the_search_stops_at_either_sign_of_degeneration",
    ),
    "length fit: one side's cut answers only": (
        "tuning/decision/statistics.py",
        "        kept = ~(s.truncated.any(axis=1) | base.truncated.any(axis=1))",
        "        kept = ~s.truncated.any(axis=1)",
        "tests/test_statistics.py",
    ),
    "margin: a smaller α exactly at the margin left out": (
        "tuning/decision/selection.py",
        "s is best or s.behind_best.high <= allowed",
        "s is best or s.behind_best.high < allowed",
        "tests/test_statistics.py::test_a_smaller_alpha_exactly_at_the_margin_counts_as_within_it",
    ),
    "provenance: a marginal gain labelled simultaneous": (
        "tuning/runs/result.py",
        '                    "gain": _round(s.gain_simultaneous),',
        '                    "gain": _round(s.gain),',
        "tests/test_tune.py::test_tune_picks_the_alpha_that_amplifies_the_rewarded_behaviour",
    ),
    "reward function identity ignores its source": (
        "tuning/objectives/rewards.py",
        'combined.update(name.encode() + b"\\0" + hashlib.sha256(sources[name]).digest())',
        "combined.update(name.encode())",
        "tests/test_rewards.py",
    ),
    "LoRA: modules_to_save on a tied embedding matched by exact name": (
        "inputs/adapters.py",
        'if any(m == s or m.endswith(f".{s}") for m in tied_modules for s in saved)',
        "if any(m == s for m in tied_modules for s in saved)",
        "tests/test_lora.py::test_what_peft_does_not_merge_into_the_tied_parameter_is_refused",
    ),
    "reward model: a cut prompt that re-tokenises longer cut once only": (
        "tuning/objectives/rewards.py",
        "        while len(ids) > limit and prompt_ids:",
        "        if len(ids) > limit and prompt_ids:",
        "tests/test_rewards.py::test_a_cut_prompt_that_re_tokenises_longer_is_cut_again_until_it_fits",
    ),
    "run key: the encoded prompts left out": (
        "tuning/api.py",
        '        "encoded_prompts": digest(prompt_ids),\n',
        "",
        "tests/test_tune_runs.py::test_a_changed_setting_is_refused_and_fresh_starts_again",
    ),
    "vllm: the run key ignores batch-invariant kernels": (
        "tuning/api.py",
        '            "batch_invariant": os.environ.get("VLLM_BATCH_INVARIANT", "0") not in ("", "0"),\n',
        "",
        f"{VLLM}tests/test_vllm.py::test_tune_on_vllm_end_to_end_with_a_reward_model_then_a_reward_function",
    ),
    "tune prints no next steps": (
        "cli/tune.py",
        '        options["info"]("Next:")\n        for step in steps:\n            options["info"](f"  {step}")\n',
        "        pass\n",
        "tests/test_tune.py::test_quiet_prints_only_the_result",
    ),
    "help: arguments named as Typer writes them": (
        "cli/_help.py",
        "        return pieces + [_argument_name(param) for param in self.get_params(ctx) if _is_argument(param)]",
        "        return super().collect_usage_pieces(ctx)",
        "tests/test_cli.py::test_options_are_grouped_and_the_command_list_is_not_cut",
    ),
    "help: verify lists an exit code it cannot end with": (
        "cli/__init__.py",
        "exit_codes_help((0, 1, 2, 3, 4, 7, 130), ",
        "exit_codes_help((0, 1, 2, 3, 4, 5, 7, 130), ",
        "tests/test_publish.py::test_help_reads_right",
    ),
    "reward model: scores keyed by where it was loaded, not where it will score": (
        "tuning/objectives/rewards.py",
        '            "device": self.planned or self.model.device.type,',
        '            "device": self.model.device.type,',
        "tests/test_rewards.py::test_a_planned_device_is_part_of_the_reward_models_identity",
    ),
    "reward model beside vLLM: no room kept for activations": (
        "tuning/backends/serving.py",
        "    needed = int(reward_bytes * REWARD_HEADROOM) + 2**30",
        "    needed = reward_bytes",
        "tests/test_rewards.py::test_a_reward_model_beside_a_vllm_engine_goes_where_it_fits",
    ),
    "a failed stream aborts only its own sinks": (
        "merging/execution.py",
        "        streams.fail()\n        raise",
        "        for sink in sinks.values():\n            sink.abort()\n        raise",
        "tests/test_merge.py::test_a_stream_stops_at_its_next_block_once_another_has_failed",
    ),
    "a stream that joins after another failed is not aborted": (
        "merging/execution.py",
        "        if failed:\n            for sink in sinks:",
        "        if False:\n            for sink in sinks:",
        "tests/test_merge.py::test_the_streams_abort_a_stream_that_joins_after_another_failed",
    ),
    "a failed stream aborts nothing": (
        "merging/execution.py",
        "        streams.fail()\n        raise",
        "        raise",
        "tests/test_merge.py::test_a_stream_stops_at_its_next_block_once_another_has_failed",
    ),
    # The power calculation's promises (tuning/decision/power.py).
    "power: one-sided critical values": (
        "tuning/decision/power.py",
        "    return NORMAL.inv_cdf(1 - per_interval / 2)",
        "    return NORMAL.inv_cdf(1 - per_interval)",
        "tests/test_power.py",
    ),
    "power: the held-out interval judged as a simultaneous one": (
        "tuning/decision/power.py",
        "NORMAL.cdf(effect * math.sqrt(held_out) - NORMAL.inv_cdf(1 - (1 - LEVEL) / 2))",
        "NORMAL.cdf(effect * math.sqrt(held_out) - critical(candidates))",
        "tests/test_power.py",
    ),
    "power: prompts split the wrong way round": (
        "tuning/decision/power.py",
        "        return power(effect, count - held, held, candidates) >= target",
        "        return power(effect, held, count - held, candidates) >= target",
        "tests/test_power.py",
    ),
    "power: the detectable gain in SDs reported as reward": (
        "tuning/decision/power.py",
        '"detectable_reward": found * spread if',
        '"detectable_reward": found if',
        "tests/test_power.py",
    ),
    "power: advice without a holdout quotes another split": (
        "tuning/decision/power.py",
        "            needed = prompts_for(self.target, self.candidates, 0.3)",
        "            needed = prompts_for(self.target, self.candidates, 0.5)",
        "tests/test_power.py",
    ),
    # Where tune's prompts come from (tuning/objectives/prompts.py).
    "prompts: first turn whatever its role": (
        "tuning/objectives/prompts.py",
        '        if isinstance(message, dict) and message.get("role") == "user":',
        "        if isinstance(message, dict):",
        "tests/test_prompts.py",
    ),
    "prompts: chosen before messages": (
        "tuning/objectives/prompts.py",
        '        value = _first_user_turn(record.get("messages") or record["chosen"], where)',
        '        value = _first_user_turn(record.get("chosen") or record["messages"], where)',
        "tests/test_prompts.py",
    ),
    "prompts: prompt field not preferred": (
        "tuning/objectives/prompts.py",
        '    elif "prompt" in record:\n',
        '    elif "prompt" in record and not record.get("messages"):\n',
        "tests/test_prompts.py",
    ),
    "prompts: named field's conversation not read": (
        "tuning/objectives/prompts.py",
        "        if isinstance(value, list):\n            value = _first_user_turn(value, where)\n",
        "",
        "tests/test_prompts.py",
    ),
    "prompts: sample not in source order": (
        "tuning/objectives/prompts.py",
        "for i in sample(len(records), limit, seed)]",
        "for i in sorted(sample(len(records), limit, seed), reverse=True)]",
        "tests/test_prompts.py",
    ),
    "prompts: wrapped list not unwrapped": (
        "tuning/objectives/prompts.py",
        '        data = next(iter(data.values()))  # {"prompts": [...]}, {"data": [...]}',
        "        pass",
        "tests/test_prompts.py",
    ),
    "prompts: blank prompt accepted": (
        "tuning/objectives/prompts.py",
        "    if not isinstance(value, str) or not value.strip():",
        "    if not isinstance(value, str) or not value:",
        "tests/test_prompts.py",
    ),
    "prompts: a relative path read as a dataset": (
        "tuning/objectives/prompts.py",
        '    return len(parts) == 2 and all(parts) and not source.startswith((".", "/"))',
        "    return len(parts) == 2 and all(parts)",
        "tests/test_prompts.py",
    ),
    "prompts: limit 0 accepted": (
        "tuning/objectives/prompts.py",
        "    if limit is not None and limit < 1:",
        "    if limit is not None and limit < 0:",
        "tests/test_prompts.py",
    ),
    # Which prompts choose and which confirm, and what a candidate counts (tuning/decision: holdout, candidate).
    "decision: holdout default below 100 prompts": (
        "tuning/decision/holdout.py",
        "        fraction = DEFAULT_FRACTION if count >= DEFAULT_FROM else 0.0",
        "        fraction = DEFAULT_FRACTION",
        DECISION,
    ),
    "decision: holdout of 1 accepted": (
        "tuning/decision/holdout.py",
        "    if not 0 <= fraction < 1:",
        "    if not 0 <= fraction <= 1:",
        DECISION,
    ),
    "decision: held-out part not seeded": (
        "tuning/decision/holdout.py",
        "    order = np.random.default_rng(seed).permutation(count)",
        "    order = np.random.default_rng(0).permutation(count)",
        DECISION,
    ),
    "decision: parts not in prompt order": (
        "tuning/decision/holdout.py",
        "    parts = Split(sorted(order[held:].tolist()), sorted(order[:held].tolist()), fraction)",
        "    parts = Split(order[held:].tolist(), order[:held].tolist(), fraction)",
        DECISION,
    ),
    "decision: few prompts not said": (
        "tuning/decision/holdout.py",
        "    if any(len(p) < FEW for p in (parts.selection, parts.confirmation) if p):",
        "    if False:",
        DECISION,
    ),
    "decision: sample not seeded": (
        "tuning/decision/holdout.py",
        "    return sorted(np.random.default_rng(seed).choice(count, size=limit, replace=False).tolist())",
        "    return sorted(np.random.default_rng(1).choice(count, size=limit, replace=False).tolist())",
        DECISION,
    ),
    "decision: cut at the reward model not counted as cut": (
        "tuning/decision/candidate.py",
        "        return [r.truncated or u for r, u in zip(self.responses, unfit, strict=True)]",
        "        return [r.truncated for r, u in zip(self.responses, unfit, strict=True)]",
        DECISION,
    ),
    "decision: repetition of 2-grams": (
        "tuning/decision/candidate.py",
        "def repetition(text: str, n: int = 3) -> float:",
        "def repetition(text: str, n: int = 2) -> float:",
        DECISION,
    ),
    # A candidate evaluated from the run folder (tuning/runs/evaluation.py).
    "evaluation: θ(α) set though nothing is left to generate": (
        "tuning/runs/evaluation.py",
        "        update = set_alpha(alpha) if missing and set_alpha else 0.0",
        "        update = set_alpha(alpha) if set_alpha else 0.0",
        "tests/test_tune_runs.py::test_a_batch_generated_but_not_scored_is_scored_on_resume_without_setting_the_model",
    ),
    "evaluation: stored rewards not remembered by the cache": (
        "tuning/runs/evaluation.py",
        "                    self.scorer.remember(prompts, texts, scored[number], references)",
        "                    pass",
        RESUMED,
    ),
    # The model card: how α was chosen, and the command that makes the output again.
    "card: a significant gain not marked": (
        "merging/card.py",
        '            + (" (significant)" if c.get("significant") else "")',
        '            + ""',
        CARD_TUNE,
    ),
    "card: α = 0 shown with a gain": (
        "merging/card.py",
        '            "baseline"\n            if c["alpha"] == 0',
        '            "baseline"\n            if False',
        CARD_TUNE,
    ),
    "card: the reproduce command without --dtype": (
        "merging/card.py",
        '        parts += ["--dtype", record["dtype"]]',
        "        pass",
        CARD_COMMAND,
    ),
    "card: the reproduce command without the rules": (
        "merging/card.py",
        "            parts += [option, value]",
        "            pass",
        CARD_COMMAND,
    ),
    "card: the held-out verdict left out of the card": (
        "merging/card.py",
        '{confirmation.get("note", "nothing was confirmed")}',
        "nothing was confirmed",
        CARD_TUNE,
    ),
    "card: the card's reward name left out": (
        "merging/card.py",
        'scored by `{tuning.get("reward")}`',
        "scored by a reward",
        CARD_TUNE,
    ),
    # Rank-sliced vLLM updates and the check of the engine's weights.
    "a block may end at the tensor's last row only if it starts at 0": (
        "tuning/backends/slicing.py",
        "            if start[dim] + size <= shape[dim]:",
        "            if start[dim] + size < shape[dim]:",
        SLICING,
    ),
    "a copied view taken for a block": (
        "tuning/backends/slicing.py",
        "(view is not base and view._base is not base)",
        "False",
        SLICING,
    ),
    "dimensions merged across a partial one taken for a block": (
        "tuning/backends/slicing.py",
        "            elif start[dim] == 0 and size % shape[dim] == 0:",
        "            elif size % shape[dim] == 0:",
        SLICING,
    ),
    "the bounding block of several copies starts at the last one": (
        "tuning/backends/slicing.py",
        "tuple((min(d[0] for d in dims)",
        "tuple((max(d[0] for d in dims)",
        SLICING,
    ),
    "a block at α=0 copied from the SFT model": (
        "tuning/backends/slicing.py",
        "            out.copy_(part(weights.aligned, t.aligned))",
        "            out.copy_(part(weights.sft, t.sft))",
        SLICING,
    ),
    "a block's last slab of rows left out": (
        "tuning/backends/slicing.py",
        "    for row in range(first, last, step):",
        "    for row in range(first, last - 1, step):",
        SLICING,
    ),
    "the fingerprint's last slab left out": (
        "tuning/backends/weight_check.py",
        "        wide = bits[start : start + step].to(torch.int64)",
        "        wide = bits[start : start + step - 1].to(torch.int64)",
        SLICING,
    ),
    "workers compute whole tensors at TP = 2": (
        "tuning/backends/vllm_worker.py",
        "        blocks = {t.name: layout.sliced(t) if self.expo_sliced else None for t in group}",
        "        blocks = {t.name: None for t in group}",
        VLLM_TP,
    ),
    "a tampered value not compared": (
        "tuning/backends/weight_check.py",
        "            if digest(region(getattr(layer, scatter.parameter), scatter)) != wanted:",
        "            if False:",
        VLLM_FENCE,
    ),
    "regions compared after vLLM repacked them": (
        "tuning/backends/weight_check.py",
        "            method.process_weights_after_loading = checked\n",
        "",
        VLLM_FENCE,
    ),
    "a weight mismatch does not fence the engine": (
        "tuning/backends/serving.py",
        '        self.fenced = f"the update to α={alpha:g} did not complete"  # until every worker says it did',
        "",
        VLLM_FENCE,
    ),
    "a worker that learned nothing is not said": (
        "tuning/backends/serving.py",
        'dict.fromkeys(stats["not_learned"] for _, _, stats in replies if not stats["learned"])',
        "()",
        VLLM_FENCE,
    ),
    "no thread binding for CPU workers": (
        "tuning/backends/serving.py",
        "            _bind_cpu_threads(tensor_parallel_size)",
        "            pass",
        VLLM_TP,
    ),
    # A tune split over processes (tuning/runs/claims.py, spread.py, status.py; tuning/api.py).
    "a single run takes the folder's lock shared": (
        "tuning/runs/runfolder.py",
        "(fcntl.LOCK_SH if shared else fcntl.LOCK_EX)",
        "fcntl.LOCK_SH",
        "tests/test_tune_runs.py::test_a_run_folder_in_use_is_refused_and_released_when_done",
    ),
    "claims: a dead holder on this host counted alive": (
        "tuning/runs/claims.py",
        "            return self.pid == me.pid or _process_start(self.pid) == self.started",
        "            return True",
        CLAIMS,
    ),
    "claims: a silent holder on another host counted alive": (
        "tuning/runs/claims.py",
        "        return now - self.heartbeat < STALE",
        "        return True",
        CLAIMS,
    ),
    "claims: a live holder's claim taken over": (
        "tuning/runs/claims.py",
        "                if holder is not None and holder.alive(time.time()):",
        "                if False:",
        CLAIMS,
    ),
    "claims: a claim file made without an exclusive create": (
        "tuning/runs/claims.py",
        "os.O_CREAT | os.O_EXCL | os.O_WRONLY",
        "os.O_CREAT | os.O_WRONLY",
        CLAIMS,
    ),
    "claims: a holder that lost its claim writes on": (
        "tuning/runs/claims.py",
        "        if claim is not None and not claim.held():",
        "        if False:",
        CLAIMS,
    ),
    "evaluation: a candidate made without claiming it": (
        "tuning/runs/evaluation.py",
        "            self.folder.claims.take(name)  # Busy when another live process is making it",
        "            pass",
        SPREAD,
    ),
    "spread: a part's share off by one": (
        "tuning/runs/spread.py",
        "grid[part.index - 1 :: part.count]",
        "grid[part.index :: part.count]",
        SPREAD,
    ),
    "spread: a part finishes with candidates left": (
        "tuning/api.py",
        "    if left:\n        opts.inform(",
        "    if False:\n        opts.inform(",
        SPREAD,
    ),
    "spread: a part requeued after the end finishes again": (
        "tuning/api.py",
        "    if folder.finished():",
        "    if False:",
        SPREAD,
    ),
    "spread: --finish computes with candidates missing": (
        "tuning/api.py",
        "    if spread.finish and left:",
        "    if False:",
        SPREAD,
    ),
    "status: a dead holder's candidate shown running": (
        "tuning/runs/status.py",
        "            if holder is not None and holder.alive(now):",
        "            if holder is not None:",
        SPREAD,
    ),
    "evaluation: an answer two candidates share scored twice in the statistics": (
        "tuning/runs/evaluation.py",
        "rewards += self.scorer.canonical(prompts, texts, references)",
        "rewards += batch_scores.rewards",
        "tests/test_tune_spread.py::test_with_a_reward_model_workers_give_the_one_process_result_and_shared_answers_tie",
    ),
    "rewards: a reward model's scores kept from other candidates": (
        "tuning/objectives/rewards.py",
        "        if scope != self.scope and isinstance(self.reward, RewardModel):",
        "        if False:",
        "tests/test_tune_spread.py::test_a_candidates_reward_model_scores_do_not_depend_on_what_the_process_scored_"
        "before",
    ),
    "run folder: parts starting at once take a half-made folder for a foreign one": (
        "tuning/runs/runfolder.py",
        "    return all(name == LOCK or name.startswith(starting) for name in entries) or (path / MARKER).is_file()",
        "    return (path / MARKER).is_file() or all(name == LOCK for name in path.iterdir())",
        "tests/test_tune_runs.py::test_parts_starting_at_once_on_an_empty_folder_all_open_it_and_one_key_is_recorded",
    ),
    "run folder: parts of other settings both record their key": (
        "tuning/runs/runfolder.py",
        '            create_once(marker, _json_bytes({"key": key}))',
        '            write_json_atomically(marker, {"key": key})',
        "tests/test_tune_runs.py::test_parts_starting_at_once_on_an_empty_folder_all_open_it_and_one_key_is_recorded",
    ),
    "trajectory: the line's weights miscounted": (
        "trajectory.py",
        "    return [1 / k + (at - mean) * (s - mean) / spread for s in steps]",
        "    return [1 / k + (at - mean) * (s - mean) / (spread + 1) for s in steps]",
        TRAJECTORY_VALUES,
    ),
    "trajectory: α in steps, not in the span of the checkpoints": (
        "trajectory.py",
        '    return check_alpha((to_step - last) / (last - first), "--to-step")',
        '    return check_alpha((to_step - last) / last, "--to-step")',
        "tests/test_trajectory.py::test_two_checkpoints_at_steps_0_and_1_are_expo_byte_for_byte",
    ),
    "trajectory: each end of the line reads every checkpoint again": (
        "inputs/trajectory.py",
        "        if kept is not None and kept[0] == key:",
        "        if False:",
        "tests/test_trajectory.py::test_both_ends_of_the_line_read_each_block_of_each_checkpoint_once_and_keep_only_"
        "that_block",
    ),
    "trajectory: job-array parts of other middle checkpoints agree": (
        "merging/run.py",
        '            "trajectory": [[m.step, _public(m.checkpoint)] for m in self.milestones or ()],',
        "",
        "tests/test_trajectory.py::test_a_job_array_part_of_another_trajectory_or_rank_is_refused",
    ),
    "inspect: a rank below one accepted": (
        "inspection.py",
        "    check_delta_rank(delta_rank)\n",
        "",
        "tests/test_trajectory.py::test_a_rank_below_one_and_a_vllm_tune_are_refused_in_one_line",
    ),
    "tune: a trajectory handed to vLLM": (
        "tuning/api.py",
        '    if backend == "vllm" and (opts.trajectory or opts.delta_rank is not None):',
        "    if False:",
        "tests/test_trajectory.py::test_a_rank_below_one_and_a_vllm_tune_are_refused_in_one_line",
    ),
    "trajectory: a sweep of steps named by α": (
        "merging/planning.py",
        '        return f"step-{step_for_alpha([m.step for m in opts.milestones], alpha):g}"',
        '        return f"alpha-{alpha:g}"',
        "tests/test_trajectory.py::test_a_sweep_of_steps_reads_the_checkpoints_once_and_writes_what_single_merges_write",
    ),
    "trajectory: the plan's memory leaves the checkpoints' blocks out": (
        "merging/run.py",
        "            buffers += self.streams * (len(self.milestones) + 4) * CHUNK_ELEMENTS * wide",
        "            pass",
        "tests/test_trajectory.py::test_the_plan_states_the_memory_a_trajectory_and_a_rank_add",
    ),
    "trajectory: the first end of the line named by the last checkpoint": (
        "inputs/trajectory.py",
        "        self.path: Path = (at or [trajectory.last])[0].path",
        "        self.path: Path = trajectory.last.path",
        "tests/test_trajectory.py::test_a_trajectory_is_the_least_squares_line_at_the_step_rounded_once",
    ),
    "delta rank: grown rows low-ranked with the shared ones": (
        "inputs/lowrank.py",
        "        if pair is None or start >= pair.shared:",
        "        if pair is None:",
        "tests/test_trajectory.py::test_delta_rank_on_a_grown_vocabulary_and_an_untied_head",
    ),
    "trajectory: equal steps accepted": (
        "trajectory.py",
        "        if after.step <= before.step:",
        "        if after.step < before.step:",
        "tests/test_trajectory.py::test_bad_trajectories_are_refused_before_any_work",
    ),
    "trajectory: a checkpoint of another shape read anyway": (
        "inputs/trajectory.py",
        '            for what, names in (("lacks", missing), '
        '("has tensors the last one lacks:", extra), ("shapes", shapes)):',
        "            for what, names in ():",
        "tests/test_trajectory.py::test_bad_trajectories_are_refused_before_any_work",
    ),
    "delta rank: one singular triplet too many": (
        "inputs/lowrank.py",
        "    u, s, vh = u[:, :rank], s[:rank], vh[:rank]",
        "    u, s, vh = u[:, : rank + 1], s[: rank + 1], vh[: rank + 1]",
        "tests/test_trajectory.py::test_delta_rank_extrapolates_each_matrix_update_s_best_rank_r_approximation",
    ),
    "delta rank: the randomised SVD without power iterations": (
        "inputs/lowrank.py",
        "    for _ in range(POWER_ITERATIONS):",
        "    for _ in range(0):",
        "tests/test_trajectory.py::test_the_randomised_svd_of_a_large_matrix_is_the_best_rank_r_approximation",
    ),
    "delta rank: a tune's run folder shared across ranks": (
        "tuning/api.py",
        '        inputs["delta_rank"] = run.low_rank.rank',
        "        pass",
        "tests/test_trajectory.py::test_a_tune_run_folder_is_refused_for_another_rank_or_trajectory",
    ),
    "inspect: a layer's kept energy not weighted by its matrices' updates": (
        "inspection.py",
        "    return sum(s.energy_kept * s.delta_norm**2 for s in measured) / total if total else 1.0",
        "    return sum(s.energy_kept for s in measured) / len(measured)",
        "tests/test_trajectory.py::test_inspect_reports_what_delta_rank_keeps_per_matrix_and_per_layer",
    ),
    "a judge asked in one order only": (
        "tuning/objectives/judge.py",
        "            second = 1.0 - self.verdict(prompt, reference, response).credit",
        "            second = first",
        JUDGE,
    ),
    "verdicts not kept": (
        "tuning/objectives/judge.py",
        "            self.cache.add(key, verdict)",
        "            pass",
        JUDGE,
    ),
    "a verdict's key without the answers' order": (
        "tuning/objectives/judge.py",
        "json.dumps([self.identity(), prompt, first, second], ensure_ascii=False)",
        "json.dumps([self.identity(), prompt, *sorted([first, second])], ensure_ascii=False)",
        JUDGE,
    ),
    "the judge budget not checked before starting": (
        "tuning/api.py",
        "    if judge.budget is not None and most > judge.budget:",
        "    if False:",
        JUDGE,
    ),
    "a judge's redirect followed": (
        "tuning/objectives/judge.py",
        "urllib.request.build_opener(Refused)",
        "urllib.request.build_opener()",
        JUDGE,
    ),
    "a judge's remaining calls counted as if no verdict were kept": (
        "tuning/objectives/judge.py",
        "self.cache.get(self.key(prompt, *order)) is None for order in orders)",
        "True for order in orders)",
        JUDGE,
    ),
    "rate limits not retried": (
        "tuning/objectives/judge.py",
        "RETRIED = (429, 500, 502, 503, 504)",
        "RETRIED = (500, 502, 504)",
        JUDGE,
    ),
    "a verdict found anywhere in the answer": (
        "tuning/objectives/judge.py",
        "        found = VERDICT.match(candidate)",
        '        found = re.search(r"\\b(A|B|tie)\\b", candidate, re.IGNORECASE)',
        JUDGE,
    ),
    "the length-controlled fit ignores length": (
        "tuning/decision/lengthcontrol.py",
        "    x = np.tanh(difference / spread) if spread > 0 else np.zeros_like(y)",
        "    x = np.zeros_like(y)",
        JUDGE,
    ),
    "the guard admits by its estimate": (
        "tuning/decision/guard.py",
        "GuardCheck(alpha, float(np.mean(scores[alpha])), loss, loss.high <= max_loss)",
        "GuardCheck(alpha, float(np.mean(scores[alpha])), loss, loss.estimate <= max_loss)",
        GUARD,
    ),
    "the guard's loss of the wrong sign": (
        "tuning/decision/guard.py",
        "    losses = {a: scores[0.0] - s for a, s in scores.items() if a != 0}",
        "    losses = {a: s - scores[0.0] for a, s in scores.items() if a != 0}",
        GUARD,
    ),
    "a choice confirmed whatever its held-out guard": (
        "tuning/decision/selection.py",
        " and (self.guard is None or self.guard.held)",
        "",
        GUARD,
    ),
    "the guard's answers kept with the objective's": (
        "tuning/runs/runfolder.py",
        'root=self.path / "guard" / digest(guard)',
        "root=self.root",
        TASKS,
    ),
    "a task scored by another metric": (
        "tuning/objectives/tasks.py",
        "        score = float(sample[self.metrics[document.task]])",
        '        score = float(sample.get("acc", 0.0))',
        TASKS,
    ),
    "task documents answered again on resume": (
        "tuning/runs/task_evaluation.py",
        "        return [n for n in range(len(self.plan(part))) if n not in made or n not in scored], made, scored",
        "        return list(range(len(self.plan(part)))), made, scored",
        TASKS,
    ),
}


def run(name: str, file: str, text: str, replacement: str, tests: str) -> tuple[bool, str]:
    path = SRC / file
    original = path.read_text()
    if original.count(text) != 1:
        return False, f"mutation text not found once in {file}"
    python = str(VLLM_PYTHON) if tests.startswith(VLLM) else sys.executable
    path.write_text(original.replace(text, replacement))
    try:
        proc = subprocess.run(
            [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests.removeprefix(VLLM).split()],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        path.write_text(original)
    failed = re.findall(r"^FAILED (\S+)", proc.stdout, re.MULTILINE)
    return proc.returncode != 0, failed[0] if failed else proc.stdout.strip().splitlines()[-1]


def main(selection: str = "") -> int:
    survivors = 0
    print("| mutation | killed | by |\n|---|---|---|")
    for name, (file, text, replacement, tests) in MUTANTS.items():
        if selection not in name:
            continue
        killed, by = run(name, file, text, replacement, tests)
        survivors += not killed
        print(f"| {name} | {'yes' if killed else 'NO'} | {by} |", flush=True)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
