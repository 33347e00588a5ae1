"""The detector's training loss: task-aligned assignment, GIoU box loss, BCE class loss.

Assignment (TOOD / YOLOv8's task-aligned assigner, without DFL): for each ground-truth
box, the anchors whose centre lies inside it are candidates; each gets the alignment
``s * iou^6`` (``s``: its predicted probability of the box's class, ``iou``: of its
predicted box with the ground truth, both detached). The 10 best-aligned candidates are
positives; an anchor positive for several boxes keeps the one it overlaps most. The class
target of a positive is its alignment normalized per box (the best positive of each box
gets that box's best IoU), 0 elsewhere.

Loss = BCE(class logits, targets) summed / sum of targets
     + 5 * sum over positives of target * (1 - GIoU(pred, gt)) / sum of targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hadmc_core.models.yolo import anchor_points, side_of

TOPK = 10
ALPHA, BETA = 1.0, 6.0
BOX_WEIGHT = 5.0


def box_iou(a: torch.Tensor, b: torch.Tensor, giou: bool = False) -> torch.Tensor:
    """IoU (or GIoU) of boxes ``a`` and ``b`` (..., 4) x1y1x2y2, broadcast."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    union = area_a + area_b - inter + 1e-7
    iou = inter / union
    if not giou:
        return iou
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2]))
    hull_area = hull.clamp(min=0).prod(-1) + 1e-7
    return iou - (hull_area - union) / hull_area


@torch.no_grad()
def assign(scores: torch.Tensor, boxes: torch.Tensor, anchors: torch.Tensor,
           targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class targets (B, A, C), box targets (B, A, 4) and the positive mask (B, A)."""
    b, a, c = scores.shape
    valid = targets[..., 0] >= 0                          # (B, M)
    cls = targets[..., 0].long().clamp(min=0)             # (B, M)
    gt = targets[..., 1:5]                                # (B, M, 4)
    pt = anchors[None, None]                              # (1, 1, A, 2)
    inside = ((pt > gt[..., None, :2]) & (pt < gt[..., None, 2:])).all(-1)
    inside &= valid[..., None]                            # (B, M, A)
    iou = box_iou(gt[:, :, None], boxes[:, None]).clamp(min=0)          # (B, M, A)
    s = scores.transpose(1, 2).gather(1, cls[..., None].expand(-1, -1, a))  # (B, M, A)
    align = s.pow(ALPHA) * iou.pow(BETA) * inside
    # Candidates with zero alignment still rank above outsiders, so boxes get anchors early.
    rank = align + inside * 1e-9
    k = min(TOPK, a)
    top = rank.topk(k, dim=-1).indices
    pos = torch.zeros_like(inside).scatter_(-1, top, True) & inside      # (B, M, A)
    multi = pos.sum(1, keepdim=True) > 1
    if multi.any():
        best = F.one_hot((iou * pos).argmax(1), pos.shape[1]).permute(0, 2, 1).bool()
        pos = torch.where(multi, best & pos, pos)
    fg = pos.any(1)                                       # (B, A)
    gt_idx = pos.float().argmax(1)                        # (B, A)
    align = align * pos
    norm = align / (align.amax(-1, keepdim=True) + 1e-9) * (iou * pos).amax(-1, keepdim=True)
    weight = norm.amax(1)                                 # (B, A)
    tcls = cls.gather(1, gt_idx)                          # (B, A)
    tscore = F.one_hot(tcls, c).float() * (weight * fg)[..., None]
    tbox = gt.gather(1, gt_idx[..., None].expand(-1, -1, 4))
    return tscore, tbox, fg


def detection_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Loss of a batch: ``outputs`` (B, A, 4 + C) from the detector, ``targets``
    (B, M, 5) padded box tables (see module doc)."""
    outputs = outputs.float()
    targets = targets.float()
    anchors, _strides = anchor_points(side_of(outputs.shape[1]), outputs.device)
    boxes, logits = outputs[..., :4], outputs[..., 4:]
    tscore, tbox, fg = assign(logits.detach().sigmoid(), boxes.detach(), anchors, targets)
    norm = tscore.sum().clamp(min=1.0)
    cls_loss = F.binary_cross_entropy_with_logits(logits, tscore, reduction="sum") / norm
    if fg.any():
        w = tscore.sum(-1)[fg]
        giou = box_iou(boxes[fg], tbox[fg], giou=True)
        box_loss = ((1.0 - giou) * w).sum() / norm
    else:
        box_loss = boxes.sum() * 0.0
    return cls_loss + BOX_WEIGHT * box_loss
