"""Distil one or more teachers into a VQShape classifier with accelerate, and save it with its label names.

    accelerate launch examples/distill.py --student_model_name_or_path vqshape-pretrained --dataset BasicMotions \
        --teacher vqshape-basicmotions --teacher pi-basicmotions --weighting mtkd_rl --output_dir vqshape-distilled

A teacher (`--teacher`, repeatable) is a classifier folder or Hub id, or an outputs file of the TRAIN split keyed by
sample id; classes are matched by name. The student is built as `finetune.py` builds its classifier, on the loss
`alpha * CE + (1 - alpha) * sum_k w_k * KD_k` with the teacher weights of `--weighting` (equal, confidence or
mtkd_rl): by default the cross-validated linear probe, whose taught heads join only where they earn it; with
`--num_train_epochs N` (mtkd_rl's default, 10: its agent learns from the training steps, identical on every process)
the whole model trains after it and a validation split of TRAIN picks the epoch. `--label_map` scores the student on
coarse classes. The test split is read once, at the end. `docs/distillation.md` tells the whole recipe.
"""

import argparse
import json
import os
import time

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm

from modeling_vqshape import VQShapeFeatureExtractor
from modeling_vqshape.tasks.classification import dataset_name
from modeling_vqshape.tasks.distillation import (
    REWARDS,
    WEIGHTINGS,
    MTKDRLAgent,
    ProbeDistillation,
    agent_state,
    agent_update,
    multi_teacher_kd_loss,
    random_state,
    reward_baseline,
    save_agent,
    step_rewards,
    teacher_weights,
)
from modeling_vqshape.tasks.finetuning import (
    BestEpoch,
    add_dataset_arguments,
    add_training_arguments,
    calibrate_kept,
    classification_dataloaders,
    evaluate_classifier,
    first_stage_scores,
    parameter_groups,
    scripted_first_stage,
    split_metrics,
)
from modeling_vqshape.tasks.teachers import read_label_map, teacher_folds, teacher_label_names, training_teachers
from modeling_vqshape.tasks.training import add_hub_arguments, check_hub_arguments, finish, set_cpu_threads


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Distil teachers into a VQShape classifier.")
    parser.add_argument("--teacher", action="append", required=True,
                        help="A classifier folder, a Hub id or a teacher outputs file (.safetensors, .npz); repeat.")
    parser.add_argument("--student_model_name_or_path", required=True, help="A VQShape checkpoint.")
    add_dataset_arguments(parser)
    add_training_arguments(parser)
    parser.add_argument("--weighting", choices=WEIGHTINGS, default="equal")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.5, help="Weight of the cross-entropy on the labels.")
    parser.add_argument("--agent_learning_rate", type=float, default=1e-3, help="Of the MTKD-RL agent (Adam).")
    parser.add_argument("--reward", choices=REWARDS, default=None,
                        help="MTKD-RL's: the improvement over the step of the student's head on the training "
                             "forward's features (head_improvement, default), of the whole student (improvement; one "
                             "more forward pass), or minus its training loss (loss; the authors' code).")
    parser.add_argument("--label_map", default=None,
                        help="JSON file or inline JSON {fine class: coarse label}: train and score on coarse classes.")
    parser.add_argument("--output_dir", default="vqshape-distilled")
    parser.set_defaults(num_train_epochs=None)  # 0 (the cross-validated probe alone), 10 with mtkd_rl
    parser.add_argument("--debug_agent_dir", default=None, help="Every process saves its MTKD-RL agent here.")
    add_hub_arguments(parser)
    args = parser.parse_args(argv)
    try:
        args.label_map = read_label_map(args.label_map)
    except ValueError as error:
        parser.error(str(error))
    if args.reward is not None and args.weighting != "mtkd_rl":
        parser.error(f"--reward is MTKD-RL's; --weighting {args.weighting} has no agent to reward.")
    args.reward = args.reward or "head_improvement"
    check_hub_arguments(parser, args, "lab/vqshape-distilled")
    if args.num_train_epochs is None:  # mtkd_rl's agent learns from the student's training steps: it needs some
        args.num_train_epochs = 10 if args.weighting == "mtkd_rl" else 0
    elif args.weighting == "mtkd_rl" and not args.num_train_epochs:
        parser.error("--weighting mtkd_rl trains its agent on the student's training steps: give --num_train_epochs "
                     "1 or more (its default, 10), or choose equal or confidence for the cross-validated probe alone.")
    return args


def main(argv=None):
    args = parse_args(argv)
    accelerator = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    set_cpu_threads(accelerator, args.num_threads)
    set_seed(args.seed)
    input_length = VQShapeFeatureExtractor.from_pretrained(args.student_model_name_or_path).input_length
    with accelerator.main_process_first():
        known = [name for teacher in args.teacher for name in teacher_label_names(teacher)] if args.label_map else []
        dataloaders, label_names, train, (past_values, labels, rows) = classification_dataloaders(
            args, input_length, with_rows=True, label_map=args.label_map, known_classes=known)
        teachers = training_teachers(args.teacher, train, label_names, input_length, args.per_device_eval_batch_size,
                                     label_map=args.label_map)
    teaching = ProbeDistillation.from_teachers(torch.stack([teacher.logits for teacher in teachers], dim=1), labels,
                                               args.weighting, args.alpha, args.temperature,
                                               *teacher_folds(teachers, train.groups))  # every TRAIN row
    # as finetune.py: without a second stage the probe is chosen by cross-validation over TRAIN and trained on all of it
    model, head, judged = scripted_first_stage(args, args.student_model_name_or_path, past_values, labels, rows,
                                               label_names, train.groups, distillation=teaching)
    accelerator.print(f"{dataset_name(args.dataset)}: {len(label_names)} classes, teachers {args.teacher}, "
                      f"weighting {args.weighting}; linear probe on {head.classifier_features}"
                      f"{' taught by the teachers' if head.taught else ''}: {judged} accuracy "
                      f"{head.validation_accuracy:.3f}")
    agent, reward = None, args.reward if args.weighting == "mtkd_rl" else None  # what rewards the agent, if any
    if args.weighting == "mtkd_rl":  # the same initial agent on every process (seeded), stepped on gathered inputs
        feature_dims = [teacher.features.shape[1] if teacher.features is not None else 0 for teacher in teachers]
        agent = MTKDRLAgent(len(label_names), feature_dims, seed=args.seed).to(accelerator.device)
        agent_optimizer = torch.optim.Adam(agent.parameters(), lr=args.agent_learning_rate)
        generator = torch.Generator().manual_seed(args.seed + accelerator.process_index)  # exploration per process

    optimizer = torch.optim.AdamW(parameter_groups(model, args.learning_rate, args.backbone_learning_rate,
                                                   args.weight_decay))
    model, optimizer, *dataloaders = accelerator.prepare(model, optimizer, *dataloaders)
    train_dataloader, validation_dataloader, test_dataloader = dataloaders
    student = accelerator.unwrap_model(model)
    best = BestEpoch()
    best.update(0, first_stage_scores(head, model, validation_dataloader, accelerator), student)
    weight_sum, weight_count = torch.zeros(len(teachers), device=accelerator.device), 0
    step_seconds, steps = 0.0, 0  # the training steps alone, for the cost of each weighting
    progress = tqdm(range(args.num_train_epochs * len(train_dataloader)), disable=not accelerator.is_local_main_process)
    model.train()
    for epoch in range(1, args.num_train_epochs + 1):
        for batch_values, batch_labels, batch_rows in train_dataloader:
            step_started = time.perf_counter()
            draws = random_state(accelerator.device) if reward == "improvement" else None  # reused after the step
            answers = [teacher(batch_values, batch_rows) for teacher in teachers]
            teacher_logits = torch.stack([answer.logits for answer in answers], dim=1)  # (batch, teachers, labels)
            outputs = model(past_values=batch_values)
            if agent is not None:
                state = agent_state(outputs.logits, outputs.features, teacher_logits,
                                    [answer.features for answer in answers], batch_labels, args.temperature)
                actions, weights = agent.sample(state, generator)
            else:
                weights = teacher_weights(args.weighting, teacher_logits, batch_labels)
            per_sample = multi_teacher_kd_loss(outputs.logits, teacher_logits, weights, batch_labels, args.alpha,
                                               args.temperature, reduction="none")
            accelerator.backward(per_sample.mean())
            baseline = reward_baseline(reward, student, outputs, batch_labels) if agent is not None else None
            optimizer.step()
            optimizer.zero_grad()
            if agent is not None:  # rewarded by --reward; every process takes the same update
                rewards = step_rewards(reward, student, outputs, batch_labels, per_sample, batch_values, draws,
                                       baseline)
                agent_update(agent, agent_optimizer, *accelerator.gather((state, actions, rewards)))
            gathered_weights = accelerator.gather(weights)
            weight_sum += gathered_weights.sum(0)
            weight_count += gathered_weights.shape[0]
            step_seconds, steps = step_seconds + time.perf_counter() - step_started, steps + 1
            progress.update(1)
        # the test rows are never looked at here
        if best.update(epoch, evaluate_classifier(model, validation_dataloader, accelerator), student):
            progress.set_postfix(best_epoch=epoch, validation_accuracy=f"{best.metrics['accuracy']:.3f}")
    progress.close()
    best.restore(student)
    calibration = calibrate_kept(model, head, validation_dataloader, accelerator) if args.calibrate else None
    # over the training steps; without any, those the probe was taught with over TRAIN
    mean_weights = weight_sum.cpu() / weight_count if weight_count else teaching.weights.float().mean(0)
    mean_weights = [round(value, 6) for value in mean_weights.tolist()]
    accelerator.print(f"mean teacher weights over training ({args.weighting}): "
                      + ", ".join(f"{name} {weight:.3f}" for name, weight in zip(args.teacher, mean_weights)))

    seconds_per_step = round(step_seconds / steps, 6) if steps else None
    metrics = split_metrics(model, test_dataloader, accelerator)
    accelerator.print(f"epoch {best.epoch} kept ({judged} accuracy {best.metrics['accuracy']:.3f}); test: "
                      f"{json.dumps(metrics)}")
    if agent is not None:
        if args.debug_agent_dir:
            save_agent(agent, os.path.join(args.debug_agent_dir, f"agent.rank{accelerator.process_index}.safetensors"))
        if accelerator.is_main_process:
            save_agent(agent, os.path.join(args.output_dir, "mtkd_rl_agent.safetensors"))
    name = dataset_name(args.dataset)
    reported = {"teachers": args.teacher, "weighting": args.weighting, "mean_teacher_weights": mean_weights,
                "reward": reward, "label_map": args.label_map, "probe_taught": head.taught, "calibration": calibration,
                "probe_admission": head.admission, "selected_epoch": best.epoch,
                "validation": best.metrics}  # in the card and eval_results.json
    training = {"base_model": args.student_model_name_or_path, "dataset": name, "labels": label_names, **reported,
                "temperature": args.temperature, "alpha": args.alpha, "classifier_features": head.classifier_features,
                "probe_folds": head.folds, "probe_members": head.members, "epochs": args.num_train_epochs,
                "learning_rate": args.learning_rate, "backbone_learning_rate": args.backbone_learning_rate,
                "seed": args.seed}
    card = dict(description=f"Distilled on {name} from {len(teachers)} teacher(s) ({', '.join(args.teacher)}) with "
                            f"the {args.weighting} weighting, by `examples/distill.py`.",
                training=training, results={name: metrics}, dataset_names=[name],
                results_description="Test split of the distilled student (`examples/distill.py`).")
    finish(accelerator, model, args, {"dataset": name, "split": "test", **metrics, **reported,
                                      "seconds_per_step": seconds_per_step},
           results_file="eval_results.json", card=card,
           message=f"\nStudent saved to {os.path.abspath(args.output_dir)}.")
    return metrics


if __name__ == "__main__":
    main()
